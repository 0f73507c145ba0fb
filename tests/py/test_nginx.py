"""Wisp behind nginx, with the server block of docs/operations.md (§ Behind nginx).

The configuration is read from the documentation at test time, between the
markers `<!-- nginx-conf-begin -->` and `<!-- nginx-conf-end -->`, so the doc
and this test cannot drift. Only two things are substituted: Wisp's address
(`127.0.0.1:8000` → the test server's port) and the listen line
(`listen 80;` → a free loopback port). A minimal nginx.conf wraps it, with
every path nginx writes in a temporary directory, and nginx runs in the
foreground as a child of the test, stopped by PID.

Skipped when nginx is not installed (scripts/install-deps.sh installs it).
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, Servers, wisp_bin
from wisp_client import Chat, http_get_json, http_request, ws_connect

OPERATIONS = REPO / "docs" / "operations.md"
BEGIN, END = "<!-- nginx-conf-begin -->", "<!-- nginx-conf-end -->"
DOC_UPSTREAM = "127.0.0.1:8000"
DOC_LISTEN = "listen 80;"
START_TIMEOUT_S = 10.0


def nginx_binary():
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx", "/usr/local/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def documented_server_block():
    """The fenced nginx block between the markers of docs/operations.md."""
    text = OPERATIONS.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, \
        "docs/operations.md must hold exactly one %s ... %s pair" % (BEGIN, END)
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    m = re.search(r"```nginx\n(.*?)```", section, re.S)
    assert m, "no ```nginx fenced block between the markers in docs/operations.md"
    return m.group(1)


def seconds(value):
    """An nginx time value (`120s`, `2m`, `90`) in seconds."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    assert m, "unexpected nginx time %r" % value
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def default_idle_timeout():
    """--idle-timeout's default, as `wisp --help` states it."""
    out = subprocess.run([wisp_bin(), "--help"], capture_output=True, text=True, timeout=10,
                         env={k: v for k, v in os.environ.items() if not k.startswith("WISP_")})
    m = re.search(r"--idle-timeout\b.*?\[default: (\d+)\]", out.stdout)
    assert m, "no --idle-timeout default in wisp --help:\n" + out.stdout
    return int(m.group(1))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """nginx in the foreground on 127.0.0.1:PORT, proxying to `upstream_port`."""

    def __init__(self, upstream_port):
        binary = nginx_binary()
        self.dir = Path(tempfile.mkdtemp(prefix="wisp-nginx-"))
        self.port = free_port()
        block = documented_server_block()
        assert DOC_UPSTREAM in block and DOC_LISTEN in block, \
            "the documented block must contain %r and %r" % (DOC_UPSTREAM, DOC_LISTEN)
        block = block.replace(DOC_UPSTREAM, "127.0.0.1:%d" % upstream_port)
        block = block.replace(DOC_LISTEN, "listen 127.0.0.1:%d;" % self.port)
        d = self.dir
        conf = f"""
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{block}
}}
"""
        (d / "nginx.conf").write_text(conf)
        self.log = open(d / "stderr.log", "wb")
        # -e: nginx opens its default error log before reading the config
        # unless told otherwise (nginx >= 1.19.5).
        self.proc = subprocess.Popen(
            [binary, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self.host = "127.0.0.1"
        self.http = "http://127.0.0.1:%d" % self.port
        self.ws = "ws://127.0.0.1:%d" % self.port
        self._wait_listening()

    def _wait_listening(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("nginx exited with status %s\n%s"
                                     % (self.proc.returncode, self.diagnostics()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AssertionError("nginx did not listen within %gs\n%s"
                             % (START_TIMEOUT_S, self.diagnostics()))

    def url(self, path):
        return self.ws + path

    def diagnostics(self):
        out = []
        for name in ("stderr.log", "error.log"):
            p = self.dir / name
            if p.exists():
                out.append("--- nginx %s ---\n%s" % (name, p.read_text(errors="replace")[-4000:]))
        return "\n".join(out)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish open requests
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def proxied():
    """(wisp, nginx): a default wisp behind the documented nginx server block."""
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (bash scripts/install-deps.sh installs it)")
    servers = Servers()
    wisp = servers()
    proxy = Nginx(wisp.port)
    yield wisp, proxy
    proxy.stop()
    servers.close()


def test_documented_read_timeout_outlasts_idle_timeout():
    block = documented_server_block()
    values = re.findall(r"^\s*proxy_read_timeout\s+(\S+);", block, re.M)
    assert values, "the documented server block sets no proxy_read_timeout"
    idle = default_idle_timeout()
    for v in values:
        assert seconds(v) > idle, \
            "proxy_read_timeout %s must be longer than --idle-timeout (%ds)" % (v, idle)


def test_documented_block_has_the_websocket_essentials():
    block = documented_server_block()
    for needle in ("proxy_http_version 1.1;", "map $http_upgrade $connection_upgrade",
                   "proxy_set_header Upgrade $http_upgrade;",
                   "proxy_set_header Connection $connection_upgrade;", "proxy_buffering off;"):
        assert needle in block, "the documented server block lacks %r" % needle


def test_healthz_and_page_through_nginx(proxied):
    _, proxy = proxied
    health = http_get_json(proxy, "/healthz")
    assert health["status"] == "ok"
    status, headers, body = http_request(proxy, "GET", "/")
    assert status == 200
    assert headers.get("content-type", "").startswith("text/html")
    assert b"<html" in body.lower()
    status, _, body = http_request(proxy, "GET", "/metrics")
    assert status == 200 and b"wisp_connections_active" in body


def test_room_chat_through_nginx(proxied, room):
    wisp, proxy = proxied
    with Chat(proxy, room, "alice") as alice:
        assert alice.welcome["users"] == ["alice"]
        with Chat(proxy, room, "bob") as bob:
            assert bob.welcome["users"] == ["alice", "bob"]
            joined = alice.next()
            assert (joined["type"], joined["client_id"]) == ("join", "bob")
            bob.say_json({"content": "hello through nginx"})
            for member in (alice, bob):
                ev = member.next_of("message")
                assert (ev["client_id"], ev["content"]) == ("bob", "hello through nginx")
            alice.say("and back")
            assert bob.next_of("message")["content"] == "and back"
            assert alice.next_of("message")["content"] == "and back"
            # Both sockets are open WebSockets on wisp, seen through nginx too.
            assert http_get_json(proxy, "/healthz")["connections"] >= 2
        left = alice.next()
        assert (left["type"], left["client_id"]) == ("leave", "bob")
    # The room's history is served through nginx as well.
    msgs = http_get_json(proxy, "/rooms/%s/messages" % room)["messages"]
    assert [m["content"] for m in msgs] == ["hello through nginx", "and back"]


def test_global_channel_through_nginx(proxied):
    _, proxy = proxied
    text = "global via nginx %d" % time.monotonic_ns()
    with ws_connect(proxy.url("/ws")) as a, ws_connect(proxy.url("/ws")) as b:
        a.send(text)
        assert a.recv(timeout=5) == text
        assert b.recv(timeout=5) == text
    got = http_get_json(proxy, "/messages")["messages"]
    assert text in [m["message"] for m in got]


def test_websocket_path_without_upgrade_is_426_through_nginx(proxied):
    # A plain GET reaches wisp without Upgrade (the map sends no Connection:
    # upgrade), so wisp's own answer comes back.
    _, proxy = proxied
    status, _, _ = http_request(proxy, "GET", "/ws")
    assert status == 426
