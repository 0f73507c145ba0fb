"""permessage-deflate (RFC 7692) with python-websockets, which offers it by default."""

import json
import zlib

from test_ops import metrics
from wisp_client import RawWS, frame, recv_type, ws_connect


def deflate_connect(url, **kw):
    """python-websockets with its default offer: permessage-deflate; client_max_window_bits."""
    return ws_connect(url, compression="deflate", **kw)


def negotiated(ws):
    return ws.response.headers.get("Sec-WebSocket-Extensions", "")


def test_websockets_negotiates_deflate_and_a_large_message_round_trips_compressed(start_wisp):
    w = start_wisp("--max-message-bytes", "1048576")
    msg = json.dumps([{"id": i, "content": "hello from the deflate test", "n": i % 7}
                      for i in range(4000)])
    assert len(msg) > 200_000
    with deflate_connect(w.url("/echo")) as ws:
        ext = negotiated(ws)
        assert ext.startswith("permessage-deflate"), ext
        # Wisp keeps no compression state between messages, in either direction.
        assert "server_no_context_takeover" in ext and "client_no_context_takeover" in ext, ext
        assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]
        ws.send(msg)
        assert ws.recv(timeout=10) == msg
    m = metrics(w)
    assert m["wisp_deflate_negotiated_total"] == 1
    # It came in compressed and went out compressed: far fewer bytes than the message.
    assert 0 < m["wisp_inflate_bytes_in_total"] < len(msg) / 5, m
    assert m["wisp_inflate_bytes_out_total"] == len(msg)
    assert m["wisp_deflate_bytes_in_total"] == len(msg)
    assert 0 < m["wisp_deflate_bytes_out_total"] < len(msg) / 5, m


def test_a_room_broadcast_is_compressed_once_for_every_deflate_member(start_wisp, room):
    w = start_wisp()
    url = w.url("/ws/%s/" % room)
    with deflate_connect(url + "a") as a, deflate_connect(url + "b") as b, \
            ws_connect(url + "plain") as plain:
        for ws in (a, b, plain):
            recv_type(ws, "welcome")
        recv_type(a, "join")
        recv_type(a, "join")
        recv_type(b, "join")
        before = metrics(w)
        content = "a chat message long enough to be worth compressing " * 8
        a.send(json.dumps({"content": content}))
        got = [recv_type(ws, "message") for ws in (a, b, plain)]
        assert all(g["content"] == content.strip() for g in got)
        after = metrics(w)
        event_bytes = len(json.dumps(got[0], separators=(",", ":")).encode())
        # One compression for the two deflate members; the plain one got the plain frame.
        assert after["wisp_deflate_bytes_in_total"] - before["wisp_deflate_bytes_in_total"] \
            == event_bytes
        assert "Sec-WebSocket-Extensions" not in plain.response.headers


def test_no_deflate_declines_the_offer(start_wisp):
    w = start_wisp("--no-deflate")
    with deflate_connect(w.url("/echo")) as ws:
        assert negotiated(ws) == ""
        ws.send("x" * 1000)
        assert ws.recv(timeout=5) == "x" * 1000


def raw_deflate_ws(w):
    """A raw connection that negotiated permessage-deflate."""
    raw = RawWS(w, extra=["Sec-WebSocket-Extensions: permessage-deflate"])
    assert raw.headers["sec-websocket-extensions"].startswith("permessage-deflate")
    return raw


def deflated(data):
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def test_raw_compressed_frames_and_refusals(start_wisp):
    w = start_wisp("--max-message-bytes", "65536")
    # A compressed message in two fragments, RSV1 on the first only, a ping between them.
    with raw_deflate_ws(w) as raw:
        z = deflated(b"hello " * 100)
        raw.send(frame(0x1, z[:5], fin=False, rsv=4) + frame(0x9, b"p") + frame(0x0, z[5:]))
        assert raw.read_exact(3) == b"\x8a\x01p"  # the pong
        head = raw.read_exact(2)
        assert head[0] == 0xC1, head  # FIN, RSV1 (compressed), text
        body = raw.read_exact(head[1] & 0x7F)
        assert zlib.decompressobj(-15).decompress(body + b"\x00\x00\xff\xff") == b"hello " * 100
    for name, frames, code in [
        ("bomb", [frame(0x2, deflated(b"\x00" * (1 << 20)), rsv=4)], 1009),
        ("corrupt", [frame(0x1, b"\xff\xff\xff", rsv=4)], 1007),
        ("compressed ping", [frame(0x9, b"", rsv=4)], 1002),
        ("rsv1 on a continuation", [frame(0x1, b"a", fin=False), frame(0x0, b"b", rsv=4)], 1002),
    ]:
        with raw_deflate_ws(w) as raw:
            raw.send(b"".join(frames))
            assert raw.recv_close() == code, name
    assert w.alive()
