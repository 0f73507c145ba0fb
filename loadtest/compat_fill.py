#!/usr/bin/env python3
"""Cost of filling one room with N members, `--compat fastapi` against the default mode.

Under `--compat fastapi` every join sends the room's whole `presence` list to
every member, so filling a room of N sends O(N^2) bytes; in the default mode a
join is one small `join` event to each member (O(N) per join as well, but of a
constant size). This starts the release daemon in each mode, opens N
connections to one room with `wisp-loadtest idle` (which reads everything it
is sent), and reports, from the daemon's /metrics and /proc:

- fill time: from the first connection until the daemon has sent its last
  byte of the fill (wisp_messages_sent_total polled every 50 ms; the
  bytes of those polls are taken out of wisp_bytes_sent_total);
- frames and bytes sent, slow consumers closed;
- the daemon's CPU time over the fill, and its peak RSS;
- the same for emptying the room: the generator closes every connection at
  once when it exits, and each leave is announced to the members left.

    cargo build --release -p wisp -p wisp-loadtest
    python3 loadtest/compat_fill.py [-n 1000] [--extra "--max-outbound-bytes 1048576"]
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WISP = REPO / "target/release/wisp"
LOADTEST = REPO / "target/release/wisp-loadtest"
TICKS = os.sysconf("SC_CLK_TCK")


POLLED = {"bytes": 0}   # what reading /metrics itself added to wisp_bytes_sent_total


def metrics(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        body = r.read()
        head = len("HTTP/1.1 200 OK\r\n\r\n") + sum(len(k) + len(v) + 4 for k, v in r.headers.items())
    text = body.decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(wisp_\w+) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    # This answer is counted in the next reading, not in this one.
    out["wisp_bytes_sent_total"] -= POLLED["bytes"]
    POLLED["bytes"] += head + len(body)
    return out


def cpu_s(pid):
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS   # utime + stime


def peak_rss_kib(pid):
    m = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/%d/status" % pid).read_text())
    return int(m.group(1))


def run(mode_args, n, extra):
    cmd = [str(WISP), "--bind", "127.0.0.1:0", "--rate-limit", "0", *mode_args, *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WISP_")}
    proc = subprocess.Popen(cmd + ["--log", "info"], stderr=subprocess.PIPE, env=env, text=True)
    port = None
    for line in proc.stderr:
        m = re.search(r"listening on http://[^:\s]+:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    assert port, "daemon did not start"
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    try:
        before = metrics(port)
        cpu0 = cpu_s(proc.pid)
        # The first plateau of wisp_messages_sent_total (0.5 s without change) ends the fill; the
        # connections then close when the generator exits, and the second plateau ends the
        # emptying (every leave is announced to those still there).
        plateaus = []
        done = threading.Event()

        def watch():
            last_frames, last_at = before["wisp_messages_sent_total"], time.monotonic()
            grew = False
            while not done.is_set() and len(plateaus) < 2:
                m = metrics(port)
                now = time.monotonic()
                if m["wisp_messages_sent_total"] != last_frames:
                    last_frames, last_at, grew = m["wisp_messages_sent_total"], now, True
                elif grew and now - last_at >= 0.5:
                    plateaus.append((last_at, m, cpu_s(proc.pid)))
                    grew = False
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        t0 = time.monotonic()
        watcher.start()
        lt = subprocess.run([str(LOADTEST), "idle", "--url", "ws://127.0.0.1:%d" % port, "-n", str(n),
                             "--path", "/ws/fill/user", "--duration", "2", "--quiet",
                             "--json", "/tmp/compat_fill_%d.json" % os.getpid()],
                            capture_output=True, text=True, timeout=600)
        if lt.returncode != 0:
            sys.stderr.write(lt.stdout + lt.stderr)
        t1 = time.monotonic()
        watcher.join(60)
        done.set()
        assert len(plateaus) == 2, "the daemon never went quiet"
        (fill_at, full, fill_cpu), (empty_at, empty, empty_cpu) = plateaus
        return {
            "members": full["wisp_websockets_active"],
            "fill_s": fill_at - t0,
            "frames": full["wisp_messages_sent_total"] - before["wisp_messages_sent_total"],
            "bytes": full["wisp_bytes_sent_total"] - before["wisp_bytes_sent_total"],
            "slow": full["wisp_slow_consumers_total"] - before["wisp_slow_consumers_total"],
            "cpu_s": fill_cpu - cpu0,
            "empty_s": empty_at - t1,
            "empty_bytes": empty["wisp_bytes_sent_total"] - full["wisp_bytes_sent_total"],
            "empty_cpu_s": empty_cpu - fill_cpu,
            "rss_mib": peak_rss_kib(proc.pid) / 1024,
        }
    finally:
        proc.terminate()
        proc.wait(10)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=1000, help="members to fill the room with")
    ap.add_argument("--extra", default="", help="more daemon options, e.g. \"--max-outbound-bytes 1048576\"")
    a = ap.parse_args()
    extra = shlex.split(a.extra)
    print("| mode | members | fill time | frames sent | bytes sent | per join | slow consumers | daemon CPU | emptying: time, bytes, CPU | peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, args in (("default", []), ("--compat fastapi", ["--compat", "fastapi"])):
        r = run(args, a.n, extra)
        print("| %s | %d | %.2f s | %d | %.1f MiB | %.1f KiB | %d | %.2f s | %.2f s, %.1f MiB, %.2f s | %.1f MiB |" % (
            name, r["members"], r["fill_s"], r["frames"], r["bytes"] / 2**20,
            r["bytes"] / a.n / 1024, r["slow"], r["cpu_s"], r["empty_s"], r["empty_bytes"] / 2**20,
            r["empty_cpu_s"], r["rss_mib"]))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
