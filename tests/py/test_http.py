"""The HTTP surface (SPEC §3) with urllib and raw sockets."""

import base64
import hashlib
import json
import os
import time

import pytest

from wisp_client import Raw, http_get_json, http_request, upgrade_request

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def raw_exchange(server, data):
    with Raw(server) as c:
        c.send(data)
        return c.read_response()


def test_healthz_fields(wisp_default):
    h = http_get_json(wisp_default, "/healthz")
    assert h["status"] == "ok"
    assert isinstance(h["connections"], int) and h["connections"] >= 0
    assert isinstance(h["rooms"], int) and h["rooms"] >= 0
    assert isinstance(h["uptime_s"], (int, float)) and 0 <= h["uptime_s"] < 3600


@pytest.mark.parametrize("path", ["/healthz", "/messages", "/rooms"])
def test_json_answers_carry_type_and_cors(wisp_default, path):
    status, headers, body = http_request(wisp_default, "GET", path)
    assert status == 200
    assert headers.get("content-type", "").startswith("application/json")
    assert headers.get("access-control-allow-origin") == "*"
    json.loads(body)


def test_client_page_is_served(wisp_default):
    status, headers, body = http_request(wisp_default, "GET", "/")
    assert status == 200
    assert headers.get("content-type", "").startswith("text/html")
    assert b"<html" in body.lower()
    # Defence in depth for a page that shows other people's text.
    assert headers.get("x-content-type-options") == "nosniff"
    assert headers.get("referrer-policy") == "no-referrer"
    csp = headers.get("content-security-policy", "")
    for directive in ("frame-ancestors 'none'", "base-uri 'none'", "object-src 'none'",
                      "default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'"):
        assert directive in csp
    # No inline script or style for that CSP to refuse: they come from their own routes.
    assert b"<script>" not in body and b"<style>" not in body and b" style=" not in body
    for path, ctype in (("/client.js", "text/javascript"), ("/client.css", "text/css"),
                        ("/favicon.ico", "image/svg+xml")):
        status, headers, part = http_request(wisp_default, "GET", path)
        assert status == 200 and part, path
        assert headers.get("content-type", "").startswith(ctype), (path, headers.get("content-type"))
        assert headers.get("content-security-policy") == csp, path


@pytest.mark.parametrize("path", ["/nope", "/healthz/extra", "/rooms/x", "/favicon.ico.nope"])
def test_unknown_path_is_404(wisp_default, path):
    status, _, _ = http_request(wisp_default, "GET", path)
    assert status == 404


@pytest.mark.parametrize("method,path", [("POST", "/healthz"), ("PUT", "/rooms"), ("DELETE", "/messages")])
def test_other_method_is_405(wisp_default, method, path):
    req = ("%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}" % (method, path)).encode()
    status, _, _ = raw_exchange(wisp_default, req)
    assert status == 405


@pytest.mark.parametrize("req", [
    b"GARBAGE\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET /healthz HTTP/9.9\r\n\r\n",
], ids=["one-token", "no-path", "bad-header", "bad-version"])
def test_malformed_request_is_400(wisp_default, req):
    status, _, _ = raw_exchange(wisp_default, req)
    allowed = (400, 505) if b"HTTP/9.9" in req else (400,)
    assert status in allowed


def test_request_head_over_8k_is_431(wisp_default):
    req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9216 + b"\r\n\r\n"
    status, _, _ = raw_exchange(wisp_default, req)
    assert status == 431


def test_head_under_8k_is_fine(wisp_default):
    req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 7000 + b"\r\n\r\n"
    status, _, _ = raw_exchange(wisp_default, req)
    assert status == 200


def test_upgrade_version_12_is_426_with_version_13(wisp_default):
    status, headers, _ = raw_exchange(wisp_default, upgrade_request("/echo", version="12"))
    assert status == 426
    assert headers.get("sec-websocket-version") == "13"


@pytest.mark.parametrize("key", [
    False,  # header missing
    base64.b64encode(b"12345678").decode(),  # 8 bytes, not 16
    "not base64 at all!!!!!!!",
], ids=["missing", "short", "not-base64"])
def test_bad_websocket_key_is_400(wisp_default, key):
    status, _, _ = raw_exchange(wisp_default, upgrade_request("/echo", key=key))
    assert status == 400


def test_upgrade_answer_has_the_rfc_accept_key(wisp_default):
    key = base64.b64encode(os.urandom(16)).decode()
    with Raw(wisp_default) as c:
        # Firefox sends "Connection: keep-alive, Upgrade": tokens, not a string compare.
        c.send(upgrade_request("/echo", key=key).replace(b"Connection: Upgrade",
                                                         b"Connection: keep-alive, Upgrade"))
        status, headers, _ = c.read_response(head_only=True)
    assert status == 101
    want = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    assert headers.get("sec-websocket-accept") == want
    assert headers.get("upgrade", "").lower() == "websocket"
    assert "upgrade" in headers.get("connection", "").lower()


def test_head_healthz_has_no_body(wisp_default):
    with Raw(wisp_default) as c:
        c.send(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = c.read_response(head_only=True)
        assert status == 200
        assert headers.get("content-type", "").startswith("application/json")
        # A body would arrive now; the next thing on the wire must be the next answer.
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status2, _, body2 = c.read_response()
    assert status2 == 200
    assert json.loads(body2)["status"] == "ok"


def test_keep_alive_two_requests_one_connection(wisp_default):
    with Raw(wisp_default) as c:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        s1, _, b1 = c.read_response()
        c.send(b"GET /rooms HTTP/1.1\r\nHost: x\r\n\r\n")
        s2, _, b2 = c.read_response()
    assert (s1, s2) == (200, 200)
    assert json.loads(b1)["status"] == "ok"
    assert "rooms" in json.loads(b2)


def test_connection_close_is_honoured(wisp_default):
    with Raw(wisp_default) as c:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, _, _ = c.read_response()
        assert status == 200
        assert c.at_eof(3), "server kept the connection after Connection: close"


def test_http_request_byte_by_byte(wisp_default):
    """A request arriving in many small reads is still one request."""
    with Raw(wisp_default) as c:
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n":
            c.send(bytes([b]))
            time.sleep(0.002)
        status, _, body = c.read_response()
    assert status == 200 and json.loads(body)["status"] == "ok"
