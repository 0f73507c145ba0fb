"""One presence per person: two connections with the same name and `?device=`
(two tabs of one browser) are one entry in `users`, and the room hears neither
the second tab come nor the first go while the other is open."""

from wisp_client import Chat, http_get_json


def users_of(server, room):
    rows = [r for r in http_get_json(server, "/rooms")["rooms"] if r["room_id"] == room]
    return rows[0]["users"] if rows else 0


def test_two_tabs_are_one_person(start_wisp, room):
    server = start_wisp()
    with Chat(server, room, "bob") as bob:
        tab1 = Chat(server, room, "alice", query="?device=browser-1")
        assert bob.next()["type"] == "join"
        tab2 = Chat(server, room, "alice", query="?device=browser-1")
        assert tab2.name == "alice"
        assert tab2.welcome["users"] == ["bob", "alice"]
        bob.silent()                                   # no second join
        assert users_of(server, room) == 2
        # Another browser asking for the name is another person.
        with Chat(server, room, "alice", query="?device=browser-2") as other:
            assert other.name == "alice#2"
            assert bob.next()["client_id"] == "alice#2"
        assert bob.next_of("leave")["client_id"] == "alice#2"
        # Both tabs see what is said, as the same author.
        bob.say("hi alice")
        bob.next_of("message")                         # his own, back
        for t in (tab1, tab2):
            assert t.next_of("message")["content"] == "hi alice"
        tab1.close()
        bob.silent()                                   # one tab is still open: no leave
        tab2.say("still here")
        assert bob.next_of("message")["client_id"] == "alice"
        assert tab2.next_of("message")["content"] == "still here"
        tab2.close()
        ev = bob.next()
        assert (ev["type"], ev["client_id"]) == ("leave", "alice")
