"""Rooms, the global channel and the JSON endpoints (SPEC §3, §4.1, §4.2, §4.4),
driven by python-websockets as any chat client would."""

import datetime
import json
import time

import pytest
import websockets.exceptions

from wisp_client import (RFC3339_MICROS, Chat, Raw, RawWS, closed_code, http_get_json, http_request,
                         upgrade_request, ws_connect)


def parse_ts(ts):
    assert isinstance(ts, str) and RFC3339_MICROS.match(ts), "timestamp %r is not RFC 3339 UTC with µs" % (ts,)
    return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def assert_recent(ts, slack=5.0):
    t = parse_ts(ts)
    assert abs(time.time() - t) < slack, "timestamp %s is not now" % ts


def assert_message_event(ev, room, client, content):
    assert ev.get("type") == "message", ev
    assert isinstance(ev.get("id"), int), ev
    assert ev.get("room_id") == room, ev
    assert ev.get("client_id") == client, ev
    assert ev.get("content") == content, ev
    assert_recent(ev.get("timestamp"))


def room_messages(server, room, query=""):
    return http_get_json(server, "/rooms/%s/messages%s" % (room, query))


def rooms_entry(server, room):
    """This room's entry in /rooms as {room_id, users, messages}, or None."""
    doc = http_get_json(server, "/rooms")
    assert isinstance(doc.get("rooms"), list), doc
    found = [r for r in doc["rooms"] if r.get("room_id") == room]
    assert len(found) <= 1, doc
    if not found:
        return None
    return {k: found[0].get(k) for k in ("room_id", "users", "messages")}


def eventually(check, timeout=3.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        assert time.monotonic() < deadline, "%s not met within %gs" % (what, timeout)
        time.sleep(0.05)


def send_and_collect(chat, texts):
    """Send each text and return the message events the sender gets back."""
    out = []
    for t in texts:
        chat.say(t)
        out.append(chat.next_of("message"))
    return out


# --- §4.2 event table ---------------------------------------------------------------

def test_welcome_is_first_with_all_fields(wisp_default, room):
    with Chat(wisp_default, room, "alice") as a:
        w = a.welcome
        assert w["room_id"] == room
        assert w["client_id"] == "alice"
        assert w["users"] == ["alice"]
        assert w["history"] == []
        assert w["ttl_s"] == 60
        assert isinstance(w["epoch"], str) and w["epoch"]
        assert w["recovered"] is True
        with Chat(wisp_default, room, "bob") as b:
            assert sorted(b.welcome["users"]) == ["alice", "bob"]
            assert b.welcome["epoch"] == w["epoch"]


def test_message_goes_to_everyone_including_sender(wisp_default, room):
    with Chat(wisp_default, room, "alice") as a, Chat(wisp_default, room, "bob") as b:
        a.say("hello room")
        mine = a.next_of("message")
        theirs = b.next_of("message")
        assert_message_event(mine, room, "alice", "hello room")
        assert mine == theirs


def test_join_and_leave_go_to_others_only(wisp_default, room):
    with Chat(wisp_default, room, "alice") as a:
        b = Chat(wisp_default, room, "bob")
        j = a.next()
        assert j["type"] == "join" and j["room_id"] == room and j["client_id"] == "bob", j
        assert_recent(j["timestamp"])
        b.silent()  # no join about oneself
        b.close()
        lv = a.next()
        assert lv["type"] == "leave" and lv["room_id"] == room and lv["client_id"] == "bob", lv
        assert_recent(lv["timestamp"])
        a.silent()


def test_leave_after_abrupt_disconnect(wisp_default, room):
    with Chat(wisp_default, room, "alice") as a:
        raw = RawWS(wisp_default, "/ws/%s/ghost" % room)
        assert a.next()["type"] == "join"
        raw.close()  # TCP close, no close frame
        lv = a.next(timeout=5)
        assert lv["type"] == "leave" and lv["client_id"] == "ghost", lv


def test_rate_limited_error_keeps_connection(start_wisp, room):
    server = start_wisp("--rate-limit", "3/60")
    with Chat(server, room, "alice") as a, Chat(server, room, "bob") as b:
        for i in range(4):
            a.say("m%d" % i)
        events = []
        while len(events) < 4:
            ev = a.next()
            if ev["type"] != "join":
                events.append(ev)
        contents = [e.get("content") for e in events if e.get("type") == "message"]
        errors = [e for e in events if e.get("type") == "error"]
        assert contents == ["m0", "m1", "m2"], events
        assert len(errors) == 1 and errors[0]["code"] == "rate_limited", events
        assert isinstance(errors[0]["message"], str) and errors[0]["message"], errors
        got_b = [b.next_of("message")["content"] for _ in range(3)]
        assert got_b == ["m0", "m1", "m2"]
        b.silent()  # the dropped message reached nobody
        assert a.ws.ping(b"still-there").wait(5), "connection unusable after rate_limited"


def test_rate_limit_zero_turns_it_off(start_wisp, room):
    server = start_wisp("--rate-limit", "0")
    with Chat(server, room, "alice") as a:
        for i in range(150):
            a.say("n%d" % i)
        got = [a.next()["content"] for _ in range(150)]
    assert got == ["n%d" % i for i in range(150)]


@pytest.mark.parametrize("bad", ['{"content": 5}', '{"text": "no content"}', '{"content": null}',
                                 '{"content": ["x"]}'])
def test_bad_request_error_keeps_connection(wisp_default, room, bad):
    with Chat(wisp_default, room, "alice") as a, Chat(wisp_default, room, "bob") as b:
        a.say(bad)
        err = a.next_of("error")
        assert err["code"] == "bad_request", err
        assert isinstance(err["message"], str) and err["message"]
        a.say("fine")
        assert a.next_of("message")["content"] == "fine"
        assert b.next_of("message")["content"] == "fine"  # b never saw the bad one


@pytest.mark.parametrize("sent,content", [
    ('{"content":" hi "}', "hi"),
    ("  plain text  ", "plain text"),
    ('{"content": "with extra", "x": 1}', "with extra"),
    ("[1, 2]", "[1, 2]"),
    ('"a json string"', '"a json string"'),
    ("{not json", "{not json"),
    ("42", "42"),
    ("<b>not html</b> & ünïcödé 🌍", "<b>not html</b> & ünïcödé 🌍"),
], ids=["json-trimmed", "plain-trimmed", "json-extra-field", "json-array", "json-string",
        "broken-json", "json-number", "markup-unicode"])
def test_content_forms(wisp_default, room, sent, content):
    with Chat(wisp_default, room, "alice") as a:
        a.say(sent)
        assert_message_event(a.next(), room, "alice", content)


def test_empty_content_is_ignored(wisp_default, room):
    with Chat(wisp_default, room, "alice") as a, Chat(wisp_default, room, "bob") as b:
        for empty in ("", "   ", '{"content": ""}', '{"content": "  \\n "}'):
            a.say(empty)
        a.say("after")
        assert a.next_of("message")["content"] == "after"  # nothing, not even an error, before it
        assert b.next_of("message")["content"] == "after"
        assert [m["content"] for m in room_messages(wisp_default, room)["messages"]] == ["after"]


def test_ids_strictly_increasing(wisp_default, room):
    with Chat(wisp_default, room, "alice") as a, Chat(wisp_default, room, "bob") as b:
        ids = []
        for i in range(10):
            (a if i % 2 else b).say("n%d" % i)
        for _ in range(10):
            ids.append(a.next_of("message")["id"])
    assert all(x < y for x, y in zip(ids, ids[1:])), ids


def test_duplicate_names_get_a_suffix(wisp_default, room):
    with Chat(wisp_default, room, "alice") as a1, Chat(wisp_default, room, "alice") as a2:
        assert a1.name == "alice"
        assert a2.name == "alice#2"
        assert sorted(a2.welcome["users"]) == ["alice", "alice#2"]
        assert a1.next()["client_id"] == "alice#2"  # the join
        a2.say("who am i")
        assert a1.next_of("message")["client_id"] == "alice#2"
        with Chat(wisp_default, room, "alice") as a3:
            assert a3.name not in ("alice", "alice#2")
            assert a3.name.startswith("alice")


def test_same_name_in_different_rooms_is_not_renamed(wisp_default, room):
    with Chat(wisp_default, room + "-x", "alice") as a, Chat(wisp_default, room + "-y", "alice") as b:
        assert a.name == b.name == "alice"


@pytest.mark.parametrize("path_room,path_client,want_room,want_client", [
    ("%20My%20Room%20", "bob", "My Room", "bob"),
    ("r{u}", "%20%20b%2Fo%07b%20", "r{u}", "bob"),
    ("r{u}", "%20", "r{u}", "anonymous"),
    ("%20", "carol{u}", "general", "carol{u}"),
    ("r{u}", "%C3%A9" * 100, "r{u}", "é" * 64),
    ("%E4%BD%A0%E5%A5%BD{u}", "dave", "你好{u}", "dave"),
], ids=["trim-room", "strip-slash-control", "empty-client", "empty-room", "cut-64-chars", "utf8-room"])
def test_names_are_cleaned(wisp_default, room, path_room, path_client, want_room, want_client):
    u = room[-6:]
    path_room, want_room = path_room.replace("{u}", u), want_room.replace("{u}", u)
    path_client, want_client = path_client.replace("{u}", u), want_client.replace("{u}", u)
    with Chat(wisp_default, path_room, path_client) as c:
        assert c.welcome["room_id"] == want_room
        assert c.welcome["client_id"] == want_client


def test_rooms_are_isolated(wisp_default, room):
    with Chat(wisp_default, room + "-1", "alice") as a, Chat(wisp_default, room + "-2", "bob") as b:
        assert b.welcome["users"] == ["bob"]
        a.say("only for room 1")
        assert a.next_of("message")["content"] == "only for room 1"
        b.silent(0.5)
        assert room_messages(wisp_default, room + "-2")["messages"] == []


# --- history, ?since=, epochs -----------------------------------------------------

def test_history_in_welcome_and_rest(wisp_default, room):
    with Chat(wisp_default, room, "alice") as a:
        sent = send_and_collect(a, ["one", "two", "three"])
    with Chat(wisp_default, room, "bob") as b:
        hist = b.welcome["history"]
        assert [m["content"] for m in hist] == ["one", "two", "three"]
        assert [m["id"] for m in hist] == [m["id"] for m in sent]
        assert all(m["client_id"] == "alice" for m in hist)
    doc = room_messages(wisp_default, room)
    assert doc["room_id"] == room and doc["ttl_s"] == 60
    assert [m["id"] for m in doc["messages"]] == [m["id"] for m in sent]
    for m, s in zip(doc["messages"], sent):
        assert m["content"] == s["content"] and m["timestamp"] == s["timestamp"]


def test_since_on_upgrade_url_and_rest(wisp_default, room):
    with Chat(wisp_default, room, "alice") as a:
        sent = send_and_collect(a, ["m1", "m2", "m3"])
        epoch = a.welcome["epoch"]
    i1, i2, i3 = [m["id"] for m in sent]
    with Chat(wisp_default, room, "bob", "?since=%d" % i1) as b:
        assert [m["id"] for m in b.welcome["history"]] == [i2, i3]
        assert b.welcome["recovered"] is True
    with Chat(wisp_default, room, "bob", "?since=%d&epoch=%s" % (i2, epoch)) as b:
        assert [m["content"] for m in b.welcome["history"]] == ["m3"]
        assert b.welcome["recovered"] is True
    with Chat(wisp_default, room, "bob", "?since=%d&epoch=%s" % (i3, epoch)) as b:
        assert b.welcome["history"] == []
        assert b.welcome["recovered"] is True
    assert [m["id"] for m in room_messages(wisp_default, room, "?since=%d" % i1)["messages"]] == [i2, i3]
    assert room_messages(wisp_default, room, "?since=%d" % i3)["messages"] == []


def test_epoch_mismatch_gives_whole_history_not_recovered(wisp_default, room):
    with Chat(wisp_default, room, "alice") as a:
        sent = send_and_collect(a, ["x1", "x2", "x3"])
        epoch = a.welcome["epoch"]
    bogus = "not-" + epoch
    with Chat(wisp_default, room, "bob", "?since=%d&epoch=%s" % (sent[1]["id"], bogus)) as b:
        assert b.welcome["recovered"] is False
        assert [m["content"] for m in b.welcome["history"]] == ["x1", "x2", "x3"]
        assert b.welcome["epoch"] == epoch


def test_history_max_drops_oldest_and_breaks_recovery(start_wisp, room):
    server = start_wisp("--history-max", "3")
    with Chat(server, room, "alice") as a:
        sent = send_and_collect(a, ["h1", "h2", "h3", "h4", "h5"])
        epoch = a.welcome["epoch"]
    ids = [m["id"] for m in sent]
    assert [m["content"] for m in room_messages(server, room)["messages"]] == ["h3", "h4", "h5"]
    # h2 was dropped: a client that last saw h1 may have missed something.
    with Chat(server, room, "bob", "?since=%d&epoch=%s" % (ids[0], epoch)) as b:
        assert b.welcome["recovered"] is False
        assert [m["content"] for m in b.welcome["history"]] == ["h3", "h4", "h5"]
    # A client that last saw h3 missed nothing.
    with Chat(server, room, "bob", "?since=%d&epoch=%s" % (ids[2], epoch)) as b:
        assert b.welcome["recovered"] is True
        assert [m["content"] for m in b.welcome["history"]] == ["h4", "h5"]


def test_expiry_with_short_ttl(start_wisp, room):
    server = start_wisp("--history-ttl", "2")
    with Chat(server, room, "alice") as a:
        assert a.welcome["ttl_s"] == 2
        t0 = time.monotonic()
        a.say("ephemeral")
        ev = a.next_of("message")
    assert ev["content"] == "ephemeral"
    time.sleep(max(0.0, t0 + 1.0 - time.monotonic()))  # 1 s before it expires
    doc = room_messages(server, room)
    assert doc["ttl_s"] == 2
    assert [m["content"] for m in doc["messages"]] == ["ephemeral"]
    with Chat(server, room, "bob") as b:
        assert [m["content"] for m in b.welcome["history"]] == ["ephemeral"]
    # Gone within 1 s after it expires (t0 + 2 s).
    while room_messages(server, room)["messages"]:
        assert time.monotonic() - t0 < 3.2, "message still in /rooms/%s/messages 1 s after its TTL" % room
        time.sleep(0.05)
    with Chat(server, room, "carol") as c:
        assert c.welcome["history"] == []
    entry = rooms_entry(server, room)
    assert entry is None or entry["messages"] == 0


def test_global_messages_expire_with_short_ttl(start_wisp):
    server = start_wisp("--history-ttl", "2")
    with ws_connect(server.url("/ws")) as g:
        t0 = time.monotonic()
        g.send("global ephemeral")
        assert g.recv(timeout=5) == "global ephemeral"
    time.sleep(max(0.0, t0 + 1.0 - time.monotonic()))
    assert [m["message"] for m in http_get_json(server, "/messages")["messages"]] == ["global ephemeral"]
    while http_get_json(server, "/messages")["messages"]:
        assert time.monotonic() - t0 < 3.2, "global message still listed 1 s after its TTL"
        time.sleep(0.05)


# --- §3 JSON endpoints -----------------------------------------------------------

def test_rooms_counts_users_and_messages(wisp_default, room):
    assert rooms_entry(wisp_default, room) is None
    with Chat(wisp_default, room, "alice") as a, Chat(wisp_default, room, "bob"):
        assert rooms_entry(wisp_default, room) == {"room_id": room, "users": 2, "messages": 0}
        send_and_collect(a, ["c1", "c2"])
        assert rooms_entry(wisp_default, room) == {"room_id": room, "users": 2, "messages": 2}
    # Nobody left, but the messages have not expired: still listed.
    eventually(lambda: rooms_entry(wisp_default, room) == {"room_id": room, "users": 0, "messages": 2},
               what="room listed with 0 users and 2 messages")


def test_room_without_people_or_messages_is_not_listed(wisp_default, room):
    with Chat(wisp_default, room, "alice"):
        assert rooms_entry(wisp_default, room)["users"] == 1
    eventually(lambda: rooms_entry(wisp_default, room) is None, what="empty room gone from /rooms")


def test_messages_shape_and_float_timestamps(start_wisp):
    server = start_wisp()
    with ws_connect(server.url("/ws")) as g:
        for text in ("first", "second"):
            g.send(text)
            assert g.recv(timeout=5) == text
    doc = http_get_json(server, "/messages")
    assert list(doc) == ["messages"]
    msgs = doc["messages"]
    assert [m["message"] for m in msgs] == ["first", "second"]  # oldest first
    for m in msgs:
        assert set(m) == {"message", "timestamp"}, m
        assert isinstance(m["timestamp"], float), "timestamp %r is not a JSON float" % (m["timestamp"],)
        assert abs(time.time() - m["timestamp"]) < 5
    assert msgs[0]["timestamp"] <= msgs[1]["timestamp"]


def test_healthz_counts_connections_and_rooms(start_wisp, room):
    server = start_wisp()
    h0 = http_get_json(server, "/healthz")
    with Chat(server, room, "alice"), Chat(server, room, "bob"):
        h = http_get_json(server, "/healthz")
        assert h["connections"] >= h0["connections"] + 2
        assert h["rooms"] == 1
    eventually(lambda: http_get_json(server, "/healthz")["connections"] <= h0["connections"] + 0,
               what="connections back to the start")


# --- §4.1 global channel -----------------------------------------------------------

def recv_until(ws, want, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "did not receive %r" % (want,)
        got = ws.recv(timeout=left)
        if got == want:
            return got


def test_global_channel_text_to_all_unchanged(start_wisp):
    server = start_wisp()
    with ws_connect(server.url("/ws")) as g1, ws_connect(server.url("/ws")) as g2:
        text = '  {"content": "not parsed"}  ünï 🌍 '
        g1.send(text)
        assert recv_until(g1, text) == text  # sender included, byte for byte
        assert recv_until(g2, text) == text


def test_global_channel_binary_closes_1003(start_wisp):
    server = start_wisp()
    with ws_connect(server.url("/ws")) as g:
        g.send(b"\x00\x01binary")
        assert closed_code(g) == 1003


def test_room_binary_closes_1003(wisp_default, room):
    with Chat(wisp_default, room, "alice") as a:
        a.ws.send(b"\x00binary")
        assert closed_code(a.ws) == 1003


# --- §2 origins, §3 CORS, §4.4 paths ----------------------------------------------

def upgrade_status(server, path, origin=None):
    extra = ["Origin: %s" % origin] if origin else []
    with Raw(server) as c:
        c.send(upgrade_request(path, extra=extra))
        status, _, _ = c.read_response(head_only=True)
    return status


def test_allowed_origin(start_wisp, room):
    server = start_wisp("--allowed-origin", "http://good.example")
    assert upgrade_status(server, "/ws/%s/eve" % room, "http://evil.example") == 403
    assert upgrade_status(server, "/echo", "http://good.example.evil.example") == 403
    assert upgrade_status(server, "/ws/%s/amy" % room, "http://good.example") == 101
    with Chat(server, room, "amy", origin="http://good.example") as c:
        assert c.welcome["room_id"] == room
    with pytest.raises(websockets.exceptions.InvalidStatus) as e:
        ws_connect(server.url("/ws/%s/eve" % room), origin="http://evil.example")
    assert e.value.response.status_code == 403
    status, headers, _ = http_request(server, "GET", "/healthz", {"Origin": "http://good.example"})
    assert status == 200
    assert headers.get("access-control-allow-origin") == "http://good.example"


def test_cors_star_by_default(wisp_default, room):
    for path in ("/healthz", "/rooms", "/messages", "/rooms/%s/messages" % room):
        status, headers, _ = http_request(wisp_default, "GET", path, {"Origin": "http://any.example"})
        assert status == 200, path
        assert headers.get("access-control-allow-origin") == "*", path


@pytest.mark.parametrize("path", ["/ws/onlyone", "/ws/a/b/c", "/wsx/a/b"])
def test_bad_ws_paths_are_404(wisp_default, path):
    assert upgrade_status(wisp_default, path) == 404
