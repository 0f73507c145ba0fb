#!/usr/bin/env python3
"""Resident memory per idle /ws connection, with and without permessage-deflate.

    WISP_BIN=target/release/wisp python3 scripts/idle_rss.py 8000 plain
    WISP_BIN=target/release/wisp python3 scripts/idle_rss.py 8000 deflate

Starts a wisp, opens N raw /ws connections (offering permessage-deflate as a
browser does, or nothing), waits for every 101, and prints the growth of the
daemon's VmRSS per connection. Figures: docs/operations.md, Sizing.
"""
import base64, os, re, socket, subprocess, sys, time
N = int(sys.argv[1]); offer = sys.argv[2] == "deflate"
wisp = os.environ["WISP_BIN"]
p = subprocess.Popen([wisp, "--bind", "127.0.0.1:0", "--log", "info"], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
port = None
while port is None:
    line = p.stderr.readline() or p.stdout.readline()
    m = re.search(r"listening on http://[^:]+:(\d+)", line)
    if m: port = int(m.group(1))
def rss():
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/%d/status" % p.pid).read()).group(1))
time.sleep(0.3)
r0 = rss()
socks = []
ext = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if offer else ""
for i in range(N):
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n" % (key, ext)).encode())
    socks.append(s)
got = 0
for s in socks:
    resp = b""
    while b"\r\n\r\n" not in resp:
        resp += s.recv(4096)
    assert resp.startswith(b"HTTP/1.1 101"), resp
    got += (b"permessage-deflate" in resp)
time.sleep(1.0)
r1 = rss()
print("%s: %d connections, negotiated %d, RSS %d KiB -> %d KiB, %.0f bytes/connection" % (sys.argv[2], N, got, r0, r1, (r1 - r0) * 1024.0 / N))
p.terminate(); p.wait()
