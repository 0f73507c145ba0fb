"""`typing` signals (docs/protocol.md, "typing"): relayed to the others, at most
one per member every 2 s, never stored, counted in /metrics."""

import json
import time

from test_ops import metrics
from wisp_client import Chat, http_get_json

TYPING = json.dumps({"type": "typing"})


def test_typing_reaches_the_others_only_and_is_never_stored(start_wisp, room):
    server = start_wisp()
    with Chat(server, room, "alice") as alice, Chat(server, room, "bob") as bob:
        alice.next_of("join")
        alice.say(TYPING)
        ev = bob.next_of("typing")
        assert (ev["client_id"], ev["room_id"]) == ("alice", room)
        alice.silent()                                 # not echoed to the typist
        alice.say(TYPING)                              # within 2 s: dropped
        bob.silent()
        assert http_get_json(server, "/rooms/%s/messages" % room)["messages"] == []
        m = metrics(server)
        assert (m["wisp_typing_total"], m["wisp_typing_limited_total"]) == (1, 1)
        time.sleep(2.05)
        alice.say(TYPING)
        assert bob.next_of("typing")["client_id"] == "alice"
        # A later joiner's welcome has no trace of it.
        with Chat(server, room, "carol") as carol:
            assert carol.welcome["history"] == []
