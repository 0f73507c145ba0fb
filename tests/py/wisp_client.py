"""Clients for the Python tests: `websockets` (a stack we did not write) for
ordinary WebSocket use, and raw sockets for what a polite client never sends.

Every wait is bounded: a test that hangs is a failing test.
"""

import base64
import json
import os
import re
import socket
import struct
import time
import urllib.error
import urllib.request

import websockets.exceptions
from websockets.sync.client import connect as _ws_connect

TIMEOUT = 5.0
RFC3339_MICROS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


# --- websockets (the library) -------------------------------------------------

def ws_connect(url, **kw):
    """A websockets sync client with settings that keep tests deterministic:
    no proxy from the environment, no compression offer, no client pings,
    no receive size limit."""
    opts = dict(open_timeout=TIMEOUT, close_timeout=TIMEOUT, max_size=None, compression=None,
                ping_interval=None, proxy=None, legacy=True)
    opts.update(kw)
    return _ws_connect(url, **opts)


def recv_json(ws, timeout=TIMEOUT):
    raw = ws.recv(timeout=timeout)
    assert isinstance(raw, str), "expected a text frame, got %r" % (raw[:80],)
    return json.loads(raw)


def recv_type(ws, type_, timeout=TIMEOUT):
    """The next event of this type, skipping others (e.g. join/leave)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "no %r event within %gs" % (type_, timeout)
        ev = recv_json(ws, left)
        if ev.get("type") == type_:
            return ev


def assert_silent(ws, within=0.4):
    """Nothing arrives on ws for `within` seconds."""
    try:
        got = ws.recv(timeout=within)
    except TimeoutError:
        return
    raise AssertionError("expected no frame, got %r" % (got[:200],))


def closed_code(ws, timeout=TIMEOUT):
    """Wait for the server's close frame on ws; return its code. Messages
    before it are skipped; a drop without a close frame fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ws.recv(timeout=0.1)
        except TimeoutError:
            pass
        except websockets.exceptions.ConnectionClosed as e:
            assert e.rcvd is not None, "connection dropped without a close frame (%s)" % e
            return e.rcvd.code
        rcvd = ws.protocol.close_rcvd
        if rcvd is not None:
            return rcvd.code
    raise AssertionError("server sent no close frame within %gs" % timeout)


class Chat:
    """A room member: `/ws/{room}/{name}`, welcome already read."""

    def __init__(self, server, room, name, query="", **kw):
        self.ws = ws_connect(server.url("/ws/%s/%s%s" % (room, name, query)), **kw)
        self.welcome = recv_json(self.ws)
        assert self.welcome.get("type") == "welcome", "first frame is not welcome: %r" % (self.welcome,)
        self.name = self.welcome["client_id"]

    def say(self, text):
        self.ws.send(text)

    def say_json(self, obj):
        self.ws.send(json.dumps(obj))

    def next(self, timeout=TIMEOUT):
        return recv_json(self.ws, timeout)

    def next_of(self, type_, timeout=TIMEOUT):
        """The next event that is not a join/leave; it must be of this type."""
        deadline = time.monotonic() + timeout
        while True:
            ev = recv_json(self.ws, max(0.01, deadline - time.monotonic()))
            if ev.get("type") in ("join", "leave") and type_ not in ("join", "leave"):
                continue
            assert ev.get("type") == type_, "expected a %r event, got %r" % (type_, ev)
            return ev

    def silent(self, within=0.4):
        assert_silent(self.ws, within)

    def close(self):
        self.ws.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- HTTP ---------------------------------------------------------------------

def http_request(server, method, path, headers=None, timeout=TIMEOUT):
    """(status, headers as a lower-case dict, body bytes); 4xx/5xx returned, not raised."""
    req = urllib.request.Request(server.http + path, method=method, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def http_get_json(server, path, headers=None):
    status, hdrs, body = http_request(server, "GET", path, headers)
    assert status == 200, "GET %s: status %d, body %r" % (path, status, body[:200])
    assert hdrs.get("content-type", "").startswith("application/json"), \
        "GET %s: Content-Type %r" % (path, hdrs.get("content-type"))
    return json.loads(body)


# --- raw sockets ----------------------------------------------------------------

class Raw:
    """A plain TCP connection to the server, speaking whatever bytes we choose."""

    def __init__(self, server, timeout=TIMEOUT):
        self.sock = socket.create_connection((server.host, server.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.timeout = timeout

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no data within %gs" % self.timeout)
        self.sock.settimeout(left)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed by the server")
        self.buf += chunk

    def read_exact(self, n, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_until(self, marker, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while marker not in self.buf:
            self._fill(deadline)
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_response(self, head_only=False, timeout=None):
        """One HTTP response: (status, headers lower-case dict, body). The body
        is read by Content-Length (none for HEAD, 1xx, 204, 304)."""
        head = self.read_until(b"\r\n\r\n", timeout).decode("latin-1")
        lines = head.split("\r\n")
        m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
        assert m, "not an HTTP status line: %r" % lines[0]
        status = int(m.group(1))
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        body = b""
        if not head_only and status >= 200 and status not in (204, 304):
            n = int(headers.get("content-length", "0"))
            body = self.read_exact(n, timeout) if n else b""
        return status, headers, body

    def at_eof(self, timeout=1.0):
        """True when the server closes (FIN or reset) within `timeout`, no data first."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.sock.settimeout(left)
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def ws_key():
    return base64.b64encode(os.urandom(16)).decode()


def upgrade_request(path, key=None, version="13", extra=None, host="127.0.0.1"):
    lines = ["GET %s HTTP/1.1" % path, "Host: %s" % host, "Upgrade: websocket",
             "Connection: Upgrade"]
    if key is not False:
        lines.append("Sec-WebSocket-Key: %s" % (key or ws_key()))
    if version is not None:
        lines.append("Sec-WebSocket-Version: %s" % version)
    lines += list(extra or [])
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def frame(opcode, payload=b"", fin=True, mask=True, rsv=0):
    """Encode one client frame (masked unless told otherwise)."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


class RawWS(Raw):
    """A raw socket that did the upgrade: frames in and out by hand."""

    def __init__(self, server, path="/echo", timeout=TIMEOUT, extra=None):
        super().__init__(server, timeout)
        self.send(upgrade_request(path, extra=extra))
        status, self.headers, _ = self.read_response(head_only=True)
        assert status == 101, "upgrade of %s answered %d" % (path, status)

    def send_frame(self, opcode, payload=b"", **kw):
        self.send(frame(opcode, payload, **kw))

    def recv_frame(self, timeout=None):
        """(fin, opcode, payload) of the next server frame; server frames must be unmasked."""
        b0, b1 = self.read_exact(2, timeout)
        assert not b1 & 0x80, "server frame is masked (RFC 6455 §5.1)"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.read_exact(2, timeout))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.read_exact(8, timeout))[0]
        payload = self.read_exact(n, timeout) if n else b""
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def recv_close(self, timeout=None):
        """Read frames until a close; return its code (None for an empty close)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no close frame within %gs" % (timeout or self.timeout))
            _, op, payload = self.recv_frame(left)
            if op == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
