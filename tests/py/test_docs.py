"""The docs say what the binary does: the log lines of docs/operations.md, the
status examples of docs/protocol.md and the `WISP_NO_ECHO` values are read
from the docs themselves and checked against the real daemon, so that neither
can drift from the other again.
"""

import re
import signal
import socket
import time
from pathlib import Path

import pytest

from wisp_client import ws_connect

DOCS = Path(__file__).resolve().parents[2] / "docs"
UPGRADE = ("Upgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


def between(text, start, end):
    """The text between the markers `<!-- start... -->` and `<!-- end -->`."""
    i = text.index("<!-- " + start)
    j = text.index("<!-- " + end, i)
    return text[text.index("-->", i) + 3:j]


def documented_log_lines():
    block = between((DOCS / "operations.md").read_text(), "log-lines", "log-lines-end")
    lines = [l for l in block.splitlines() if re.match(r"^\d{4}-\d\d-\d\dT", l)]
    assert lines, "no log lines between the log-lines markers"
    return lines


def as_pattern(line):
    """A documented log line as a regex: any timestamp, and any number where it has one
    (version, port, counts)."""
    stamp, rest = line.split(" ", 1)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", stamp), stamp
    return re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z " + re.sub(r"\\\d+|\d+", r"\\d+", re.escape(rest)) + "$")


def test_documented_log_lines_are_what_the_daemon_prints_at_info(start_wisp):
    server = start_wisp()
    ws = ws_connect(server.url("/ws"))   # one peer, which answers the close at shutdown
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while b"SIGHUP" not in server.read_log():
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.02)
    assert server.stop() == 0
    ws.close()
    printed = [l for l in server.read_log().decode().splitlines() if l.strip()]
    patterns = [as_pattern(l) for l in documented_log_lines()]
    # Every documented line is printed, in the documented order...
    at = 0
    for doc_line, pattern in zip(documented_log_lines(), patterns):
        while at < len(printed) and not pattern.match(printed[at]):
            at += 1
        assert at < len(printed), "documented but not printed: %r\nprinted:\n%s" % (doc_line, "\n".join(printed))
        at += 1
    # ...and nothing else is printed at info.
    for line in printed:
        assert any(p.match(line) for p in patterns), "printed but not documented: %r" % line
    # The documented shutdown line has this run's numbers: one peer, which answered.
    assert any(l.endswith("wisp stopped: 1 of 1 peers closed cleanly") for l in printed), printed


def status_examples():
    block = between((DOCS / "protocol.md").read_text(), "status-examples", "status-examples-end")
    rows = []
    for line in block.splitlines():
        m = re.match(r"^\| `(\w+) (\S+)`( \+ upgrade)? \| `(\d{3})` \|$", line)
        if m:
            rows.append((m.group(1), m.group(2), bool(m.group(3)), int(m.group(4))))
    assert len(rows) >= 10, "status examples not found in docs/protocol.md"
    return rows


@pytest.fixture(scope="module")
def plain_wisp():
    from conftest import Servers
    s = Servers()
    yield s()
    s.close()


@pytest.mark.parametrize("method,path,upgrade,status", status_examples(),
                         ids=lambda v: str(v))
def test_documented_status(plain_wisp, method, path, upgrade, status):
    with socket.create_connection((plain_wisp.host, plain_wisp.port), timeout=5) as s:
        s.sendall(("%s %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (method, path, UPGRADE if upgrade else "")).encode())
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(1024)
            assert chunk, "closed without an answer"
            head += chunk
    got = int(head.split(b" ", 2)[1])
    assert got == status, "%s %s%s: documented %d, answered %d" % (
        method, path, " + upgrade" if upgrade else "", status, got)


def no_echo_values():
    row = next(l for l in (DOCS / "operations.md").read_text().splitlines() if l.startswith("| `--no-echo`"))
    accepted = row.split("|")[4]
    on, _, off = accepted.partition("(and")
    on, off = re.findall(r"`([^`]+)`", on), re.findall(r"`([^`]+)`", off)
    assert on and off, row
    return [(v, True) for v in on] + [(v, False) for v in off]


@pytest.mark.parametrize("value,disables", no_echo_values())
def test_documented_wisp_no_echo_values(start_wisp, value, disables):
    server = start_wisp(env={"WISP_NO_ECHO": value})
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall(("GET /echo HTTP/1.1\r\nHost: x\r\n%s\r\n" % UPGRADE).encode())
        status = int(s.recv(1024).split(b" ", 2)[1])
    assert status == (404 if disables else 101), "WISP_NO_ECHO=%s: %d" % (value, status)
