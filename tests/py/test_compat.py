"""`--compat fastapi`: the seed apps' own protocols (docs/protocol.md, "Compatibility mode").

The rooms app's client (seed 001) draws every frame but `presence` as a card of
`content`, so every frame here is checked to be either a `presence` event or
something with a non-empty `content`. The FastAPI documentation example
(seed 003) speaks plain text on `/ws/{client_id}`.
"""

import json
import re
import time

from wisp_client import assert_silent, http_get_json, http_request, recv_json, ws_connect

PY_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?\+00:00$")


def drawable(ev):
    """What the seed rooms client would do with `ev`: no empty card, ever."""
    if ev.get("type") == "presence":
        assert isinstance(ev.get("users"), list), ev
        return
    assert isinstance(ev.get("content"), str) and ev["content"], "empty card for %r" % (ev,)


class Member:
    """A rooms-app client: every frame it gets is checked as the seed client would draw it."""

    def __init__(self, server, room, name):
        self.ws = ws_connect(server.url("/ws/%s/%s" % (room, name)))

    def next(self, timeout=5.0):
        ev = recv_json(self.ws, timeout)
        drawable(ev)
        assert PY_ISO.match(ev["timestamp"]), ev
        return ev

    def send(self, text):
        self.ws.send(text)

    def close(self):
        self.ws.close()


def test_join_and_leave_speak_the_rooms_app_vocabulary(start_wisp, room):
    server = start_wisp("--compat", "fastapi")
    alice = Member(server, room, "alice")
    line = alice.next()
    assert line == {"type": "system", "room_id": room, "client_id": "system",
                    "content": "alice joined %s." % room, "timestamp": line["timestamp"]}
    assert list(line) == ["type", "room_id", "client_id", "content", "timestamp"], "the app's field order"
    presence = alice.next()
    assert presence == {"type": "presence", "users": ["alice"], "timestamp": presence["timestamp"]}

    bob = Member(server, room, "bob")
    for m in (bob, alice):
        assert m.next()["content"] == "bob joined %s." % room
        assert m.next()["users"] == ["alice", "bob"]

    bob.close()
    assert alice.next()["content"] == "bob left %s." % room
    assert alice.next()["users"] == ["alice"]
    assert_silent(alice.ws)
    alice.close()


def test_messages_and_content_as_the_app_takes_it(start_wisp, room):
    server = start_wisp("--compat", "fastapi")
    alice = Member(server, room, "alice")
    alice.next(), alice.next()
    cases = [
        (json.dumps({"content": "  hello  "}), "hello"),
        (json.dumps({"content": 42}), "42"),
        (json.dumps({"content": None}), "None"),
        (json.dumps({"content": True}), "True"),
        (json.dumps({"content": "x", "extra": 1}), "x"),
        ("plain text", "plain text"),
        ("[1, 2]", "[1, 2]"),
        ("{not json", "{not json"),
    ]
    for text, content in cases:
        alice.send(text)
        ev = alice.next()
        assert ev["type"] == "message", ev
        assert (ev["client_id"], ev["content"], ev["room_id"]) == ("alice", content, room), (text, ev)
    # Nothing to say: the app ignores empty content, and so does Wisp, with no error card.
    for text in (json.dumps({"other": 1}), json.dumps({"content": "   "}), "   "):
        alice.send(text)
    assert_silent(alice.ws)
    alice.close()


def test_a_joiner_gets_the_history_as_messages_and_no_welcome(start_wisp, room):
    server = start_wisp("--compat", "fastapi")
    alice = Member(server, room, "alice")
    alice.next(), alice.next()
    for i in range(3):
        alice.send("line %d" % i)
        alice.next()
    bob = Member(server, room, "bob")
    got = [bob.next() for _ in range(5)]
    assert [e["type"] for e in got] == ["message"] * 3 + ["system", "presence"]
    assert [e["content"] for e in got[:3]] == ["line 0", "line 1", "line 2"]
    # The same events are what the HTTP view holds.
    view = http_get_json(server, "/rooms/%s/messages" % room)
    assert [m["content"] for m in view["messages"]] == ["line 0", "line 1", "line 2"]
    assert PY_ISO.match(view["messages"][0]["timestamp"])
    bob.close()
    alice.close()


def test_rate_limited_error_is_drawn_with_its_text(start_wisp, room):
    server = start_wisp("--compat", "fastapi", "--rate-limit", "1/60")
    alice = Member(server, room, "alice")
    alice.next(), alice.next()
    alice.send("one")
    assert alice.next()["content"] == "one"
    alice.send("two")
    err = alice.next()
    assert (err["type"], err["code"], err["client_id"]) == ("error", "rate_limited", "system"), err
    assert "rate limit" in err["content"]
    alice.close()


def test_messages_expire_as_in_the_default_mode(start_wisp, room):
    server = start_wisp("--compat", "fastapi", "--history-ttl", "1")
    alice = Member(server, room, "alice")
    alice.next(), alice.next()
    alice.send("short-lived")
    alice.next()
    time.sleep(1.3)
    assert http_get_json(server, "/rooms/%s/messages" % room)["messages"] == []
    alice.close()


def test_fastapi_example_channel(start_wisp):
    server = start_wisp("--compat", "fastapi")
    one = ws_connect(server.url("/ws/1700000000001"))
    two = ws_connect(server.url("/ws/1700000000002"))
    one.send("hello")
    assert one.recv(timeout=5) == "You wrote: hello"
    assert one.recv(timeout=5) == "Client #1700000000001 says: hello"
    assert two.recv(timeout=5) == "Client #1700000000001 says: hello"
    one.close()
    assert two.recv(timeout=5) == "Client #1700000000001 left the chat"
    assert_silent(two)
    two.close()


def test_compat_from_the_environment_and_off_by_default(start_wisp):
    server = start_wisp(env={"WISP_COMPAT": "fastapi"})
    ws = ws_connect(server.url("/ws/r/alice"))
    assert recv_json(ws)["type"] == "system"
    ws.close()
    plain = start_wisp()
    status, _, _ = http_request(plain, "GET", "/ws/123",
                                headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                         "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                         "Sec-WebSocket-Version": "13"})
    assert status == 404
