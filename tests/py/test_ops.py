"""Operations: command line, metrics, shutdown, timeouts and limits (SPEC §2, §4.3, §6)."""

import os
import re
import signal
import socket
import subprocess
import time

import pytest

from conftest import wisp_bin
from wisp_client import Chat, Raw, RawWS, closed_code, http_get_json, http_request, upgrade_request, ws_connect

METRICS = [
    "wisp_connections_active", "wisp_connections_total", "wisp_messages_received_total",
    "wisp_messages_sent_total", "wisp_bytes_received_total", "wisp_bytes_sent_total",
    "wisp_history_messages", "wisp_rooms_active", "wisp_messages_expired_total",
    "wisp_rate_limited_total", "wisp_slow_consumers_total", "wisp_handshake_failures_total",
    "wisp_protocol_errors_total",
]


def metrics(server):
    status, headers, body = http_request(server, "GET", "/metrics")
    assert status == 200
    assert headers.get("content-type", "").startswith("text/plain"), headers.get("content-type")
    values = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        assert m, "not Prometheus text: %r" % line
        values[m.group(1)] = values.get(m.group(1), 0.0) + float(m.group(3))
    return values


def run_wisp(*args, timeout=10, env=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WISP_")}
    full_env.update(env or {})
    return subprocess.run([wisp_bin(), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=full_env)


# --- §2 command line -------------------------------------------------------------

def test_help_exits_0_and_names_options():
    r = run_wisp("--help")
    assert r.returncode == 0, r.stderr
    for opt in ("--bind", "--history-ttl", "--max-message-bytes", "--rate-limit", "--allowed-origin"):
        assert opt in r.stdout + r.stderr, opt


@pytest.mark.parametrize("args,name", [
    (["--history-ttl", "soon"], "history-ttl"),
    (["--rate-limit", "lots"], "rate-limit"),
    (["--max-message-bytes", "-5"], "max-message-bytes"),
    (["--bind", "not an address"], "bind"),
    (["--log", "chatty"], "log"),
])
def test_bad_option_exits_2_naming_it(args, name):
    r = run_wisp(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert name in r.stderr, r.stderr


def test_options_from_environment(start_wisp):
    server = start_wisp(env={"WISP_HISTORY_TTL": "7"})
    with Chat(server, "envroom", "alice") as c:
        assert c.welcome["ttl_s"] == 7


# --- §6 metrics, shutdown ---------------------------------------------------------

def test_metrics_names_and_counting(start_wisp):
    server = start_wisp("--rate-limit", "1/60")
    m0 = metrics(server)
    missing = [n for n in METRICS if n not in m0]
    assert not missing, "missing from /metrics: %s" % missing
    with Chat(server, "metrics", "alice") as a:
        a.say("one")
        a.next_of("message")
        a.say("two")  # over the limit
        assert a.next_of("error")["code"] == "rate_limited"
        m1 = metrics(server)
        assert m1["wisp_connections_active"] >= 1
        assert m1["wisp_rooms_active"] >= 1
        assert m1["wisp_history_messages"] >= 1
    assert m1["wisp_rate_limited_total"] >= m0["wisp_rate_limited_total"] + 1
    assert m1["wisp_connections_total"] >= m0["wisp_connections_total"] + 1
    assert m1["wisp_messages_received_total"] >= m0["wisp_messages_received_total"] + 2
    assert m1["wisp_messages_sent_total"] >= m0["wisp_messages_sent_total"] + 3  # welcome, message, error
    assert m1["wisp_bytes_received_total"] > m0["wisp_bytes_received_total"]
    assert m1["wisp_bytes_sent_total"] > m0["wisp_bytes_sent_total"]
    with Raw(server) as c:
        c.send(upgrade_request("/echo", version="12"))
        assert c.read_response()[0] == 426
    with RawWS(server) as c:
        c.send_frame(0x3)
        assert c.recv_close() == 1002
    m2 = metrics(server)
    assert m2["wisp_handshake_failures_total"] >= m1["wisp_handshake_failures_total"] + 1
    assert m2["wisp_protocol_errors_total"] >= m1["wisp_protocol_errors_total"] + 1


def test_sigterm_closes_peers_1001_and_exits_0(start_wisp):
    server = start_wisp()
    ws = ws_connect(server.url("/echo"))
    ws.send("hi")
    assert ws.recv(timeout=5) == "hi"
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert closed_code(ws, timeout=5) == 1001
    assert server.proc.wait(7) == 0
    assert time.monotonic() - t0 < 6.5
    # New connections are refused once it is gone.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


def test_sigterm_exits_0_even_if_peer_never_answers(start_wisp):
    server = start_wisp()
    c = RawWS(server)  # never answers the server's close
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(8) == 0
    assert time.monotonic() - t0 < 7.5, "graceful shutdown took more than 5 s + slack"
    c.close()


# --- §4.3 timeouts and limits ----------------------------------------------------

def test_handshake_timeout_closes_slow_request(start_wisp):
    server = start_wisp("--handshake-timeout", "1")
    with Raw(server) as c:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
        t0 = time.monotonic()
        # It may answer 408 before closing; it must close.
        deadline = t0 + 4
        closed = False
        while time.monotonic() < deadline and not closed:
            closed = c.at_eof(0.2)
        assert closed, "connection with an unfinished request still open after 4 s"
        assert time.monotonic() - t0 > 0.5, "closed before the handshake timeout"
    assert http_get_json(server, "/healthz")["status"] == "ok"


def test_heartbeat_ping_then_drop_silent_peer(start_wisp):
    server = start_wisp("--ping-interval", "1", "--idle-timeout", "3")
    with RawWS(server) as c:
        t0 = time.monotonic()
        fin, op, payload = c.recv_frame(timeout=3)
        assert op == 0x9, "expected a ping after 1 s of silence, got opcode %#x" % op
        assert 0.5 < time.monotonic() - t0 < 2.5
        # We never answer: dropped (close frame or TCP close) ~3 s after our last frame.
        assert _dropped_within(c, 4.5), "silent peer not dropped within 4.5 s"
        assert time.monotonic() - t0 < 5.5


def _dropped_within(c, timeout):
    """True when the server sends a close frame or closes TCP within timeout."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            _, op, _ = c.recv_frame(timeout=left)
            if op == 0x8:
                return True
    except (EOFError, ConnectionResetError):
        return True
    except (TimeoutError, socket.timeout):
        return False


def test_heartbeat_keeps_answering_peer(start_wisp):
    server = start_wisp("--ping-interval", "1", "--idle-timeout", "3")
    with RawWS(server) as c:
        t0 = time.monotonic()
        pings = 0
        while time.monotonic() - t0 < 5:
            fin, op, payload = c.recv_frame(timeout=3)
            assert op == 0x9, op
            pings += 1
            c.send_frame(0xA, payload)
        assert pings >= 2
        c.send_frame(0x1, b"still here")
        # /echo: the answer proves the connection survived past the idle timeout.
        while True:
            fin, op, payload = c.recv_frame(timeout=3)
            if op != 0x9:
                break
        assert (op, payload) == (0x1, b"still here")


def test_max_connections_per_ip_503(start_wisp):
    server = start_wisp("--max-connections-per-ip", "2")
    a, b = RawWS(server), RawWS(server)
    try:
        with Raw(server) as c:
            c.send(upgrade_request("/echo"))
            assert c.read_response()[0] == 503
    finally:
        a.close()
        b.close()
    time.sleep(0.3)
    with RawWS(server):
        pass  # a slot is free again


def test_slow_consumer_is_closed_others_unaffected(start_wisp):
    server = start_wisp("--max-outbound-bytes", "262144", "--rate-limit", "0")
    room = "slowroom"
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", server.port))
    slow.sendall(upgrade_request("/ws/%s/slow" % room))  # and never read again
    with Chat(server, room, "fast") as fast:
        big = "x" * 60000
        t0 = time.monotonic()
        for i in range(120):  # ~7 MB to the slow reader, far over 256 KiB
            fast.say("%d %s" % (i, big))
            ev = fast.next_of("message", timeout=5)
            assert ev["content"].startswith("%d " % i)
        assert time.monotonic() - t0 < 20, "the fast client was held up by the slow one"

        def slow_gone():
            return metrics(server)["wisp_slow_consumers_total"] >= 1
        deadline = time.monotonic() + 5
        while not slow_gone():
            assert time.monotonic() < deadline, "slow consumer not closed"
            time.sleep(0.1)
    slow.close()
