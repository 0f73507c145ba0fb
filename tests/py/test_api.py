"""The server API (`--api-key-file`, docs/protocol.md "Server API"): publish, presence, disconnect
and history for a backend, behind its own key."""

import json
import socket
import time
import urllib.error
import urllib.request

import pytest

from wisp_client import Chat, closed_code, http_request, recv_type

KEY = "api-key-for-tests-0123456789"


def api(server, method, path, body=None, key=KEY, raw=None):
    """(status, parsed JSON or raw bytes) for an API call."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = "Bearer " + key
    req = urllib.request.Request(server.http + path, method=method, data=data, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=5) as r:
            status, text = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


@pytest.fixture
def api_wisp(start_wisp, tmp_path):
    p = tmp_path / "api-key"
    p.write_text(KEY + "\n")
    return start_wisp("--api-key-file", p, "--history-ttl", "2")


def test_the_api_refuses_a_wrong_key(api_wisp, room):
    path = "/api/rooms/%s/messages" % room
    body = {"client_id": "backend", "content": "x"}
    assert api(api_wisp, "POST", path, body, key=None)[0] == 401
    assert api(api_wisp, "POST", path, body, key="wrong")[0] == 401
    assert api(api_wisp, "POST", path, body, key=KEY + "x")[0] == 401
    assert api(api_wisp, "GET", "/api/rooms/%s/presence" % room, key="wrong")[0] == 401
    # Nothing was published.
    assert api(api_wisp, "GET", path)[1]["messages"] == []


def test_without_a_key_file_the_api_is_not_there(wisp_default, room):
    assert api(wisp_default, "GET", "/api/rooms/%s/presence" % room)[0] == 404


def test_published_messages_are_ordinary_messages(api_wisp, room):
    with Chat(api_wisp, room, "alice") as a:
        a.say("first")
        first = a.next_of("message")
        status, ev = api(api_wisp, "POST", "/api/rooms/%s/messages" % room,
                         {"client_id": "backend", "content": "  from the server  "})
        assert status == 200, ev
        assert ev["type"] == "message" and ev["client_id"] == "backend"
        assert ev["content"] == "from the server" and ev["id"] > first["id"]
        got = a.next_of("message")
        assert got == ev
        # In the history, with its id, for recovery too.
        history = api(api_wisp, "GET", "/api/rooms/%s/messages" % room)[1]["messages"]
        assert [m["id"] for m in history] == [first["id"], ev["id"]]
        with Chat(api_wisp, room, "late", "?since=%d&epoch=%s" % (first["id"], a.welcome["epoch"])) as late:
            assert [m["id"] for m in late.welcome["history"]] == [ev["id"]]
            assert late.welcome["recovered"] is True
        # And it expires like any other (--history-ttl 2).
        deadline = time.monotonic() + 5
        while api(api_wisp, "GET", "/api/rooms/%s/messages" % room)[1]["messages"]:
            assert time.monotonic() < deadline, "the published message did not expire"
            time.sleep(0.1)


def test_bad_bodies_get_400(api_wisp, room):
    path = "/api/rooms/%s/messages" % room
    assert api(api_wisp, "POST", path, raw=b"not json")[0] == 400
    assert api(api_wisp, "POST", path, {"content": "x"})[0] == 400
    assert api(api_wisp, "POST", path, {"client_id": "b"})[0] == 400
    assert api(api_wisp, "POST", path, {"client_id": "b", "content": "   "})[0] == 400
    assert api(api_wisp, "PUT", path, {"client_id": "b", "content": "x"})[0] == 405


def test_a_body_over_64_kib_gets_413(api_wisp, room):
    big = {"client_id": "b", "content": "x" * (70 * 1024)}
    assert api(api_wisp, "POST", "/api/rooms/%s/messages" % room, big)[0] == 413


def test_a_body_in_pieces_is_waited_for(api_wisp, room):
    body = json.dumps({"client_id": "slow", "content": "piecewise"}).encode()
    head = ("POST /api/rooms/%s/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            "Content-Length: %d\r\nConnection: close\r\n\r\n" % (room, KEY, len(body))).encode()
    with socket.create_connection((api_wisp.host, api_wisp.port), timeout=5) as s:
        s.sendall(head + body[:5])
        time.sleep(0.2)
        s.sendall(body[5:])
        answer = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert b'"content":"piecewise"' in answer


def test_presence_and_disconnect(api_wisp, room):
    with Chat(api_wisp, room, "alice") as a, Chat(api_wisp, room, "bob") as b:
        status, doc = api(api_wisp, "GET", "/api/rooms/%s/presence" % room)
        assert status == 200 and doc == {"room_id": room, "users": ["alice", "bob"]}
        status, doc = api(api_wisp, "POST", "/api/rooms/%s/disconnect" % room, {"client_id": "bob"})
        assert status == 200 and doc == {"disconnected": 1}
        assert closed_code(b.ws) == 4002
        leave = recv_type(a.ws, "leave")
        assert leave["client_id"] == "bob"
        assert api(api_wisp, "GET", "/api/rooms/%s/presence" % room)[1]["users"] == ["alice"]
        status, doc = api(api_wisp, "POST", "/api/rooms/%s/disconnect" % room, {"client_id": "nobody"})
        assert status == 200 and doc == {"disconnected": 0}


def test_keep_alive_after_an_api_call(api_wisp, room):
    body = json.dumps({"client_id": "k", "content": "one"}).encode()
    req = ("POST /api/rooms/%s/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
           "Content-Length: %d\r\n\r\n" % (room, KEY, len(body))).encode() + body
    follow = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection((api_wisp.host, api_wisp.port), timeout=5) as s:
        s.sendall(req + follow)
        answer = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.count(b"HTTP/1.1 200 OK") == 2, answer[:400]
    assert http_request(api_wisp, "GET", "/healthz")[0] == 200


def test_a_body_that_never_completes_is_cut_at_the_handshake_deadline(start_wisp, tmp_path, room):
    p = tmp_path / "api-key"
    p.write_text(KEY)
    w = start_wisp("--api-key-file", p, "--handshake-timeout", "1")
    head = ("POST /api/rooms/%s/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            "Content-Length: 100\r\n\r\n" % (room, KEY)).encode()
    with socket.create_connection((w.host, w.port), timeout=5) as s:
        s.sendall(head + b'{"client_id":')
        started = time.monotonic()
        assert s.recv(1024) == b"", "expected a close without an answer"
        assert time.monotonic() - started < 3
    assert api(w, "GET", "/api/rooms/%s/messages" % room)[1]["messages"] == []


def test_without_the_key_a_body_is_not_waited_for(api_wisp, room):
    head = ("POST /api/rooms/%s/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
            "Content-Length: 60000\r\n\r\n" % room).encode()
    with socket.create_connection((api_wisp.host, api_wisp.port), timeout=5) as s:
        s.sendall(head)
        started = time.monotonic()
        answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        assert time.monotonic() - started < 1
