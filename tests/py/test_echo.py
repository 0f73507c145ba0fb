"""/echo with python-websockets and with raw frames (SPEC §3, §4.3)."""

import os
import struct

import pytest

from wisp_client import RawWS, closed_code, http_get_json, ws_connect

SIZES = [0, 1, 125, 126, 65535, 65536, 1 << 20]


def assert_healthy(server):
    """After a misbehaving peer the server still answers, with the spec's fields."""
    h = http_get_json(server, "/healthz")
    assert h.get("status") == "ok", h
    for field in ("connections", "rooms"):
        assert isinstance(h.get(field), int) and h[field] >= 0, (field, h)
    assert isinstance(h.get("uptime_s"), (int, float)) and h["uptime_s"] >= 0, h


def text_of(n):
    return ("abcdefghijklmnopqrstuvwxyz0123456789" * (n // 36 + 1))[:n]


@pytest.mark.parametrize("size", SIZES)
def test_echo_text_round_trip(wisp_echo, size):
    msg = text_of(size)
    with ws_connect(wisp_echo.url("/echo")) as ws:
        ws.send(msg)
        got = ws.recv(timeout=10)
    assert isinstance(got, str), "text came back as %s" % type(got).__name__
    assert len(got) == size and got == msg


@pytest.mark.parametrize("size", SIZES)
def test_echo_binary_round_trip(wisp_echo, size):
    msg = os.urandom(size)
    with ws_connect(wisp_echo.url("/echo")) as ws:
        ws.send(msg)
        got = ws.recv(timeout=10)
    assert isinstance(got, bytes), "binary came back as %s" % type(got).__name__
    assert len(got) == size and got == msg


def test_echo_utf8_multibyte_text(wisp_echo):
    short = "héllo wörld — ünïcödé ✓ 你好 🌍🚀 ﷽"
    long = short * 4000  # > 64 KiB of mixed 1–4 byte sequences, split across reads
    with ws_connect(wisp_echo.url("/echo")) as ws:
        for msg in (short, long):
            ws.send(msg)
            assert ws.recv(timeout=10) == msg


def test_echo_many_messages_in_order(wisp_echo):
    with ws_connect(wisp_echo.url("/echo")) as ws:
        for i in range(200):
            ws.send("m%d" % i)
        got = [ws.recv(timeout=5) for _ in range(200)]
    assert got == ["m%d" % i for i in range(200)]


def test_ping_gets_pong_with_same_payload_websockets(wisp_echo):
    with ws_connect(wisp_echo.url("/echo")) as ws:
        pong = ws.ping(b"wisp-ping-123")
        assert pong.wait(5), "no pong for the ping within 5 s"


@pytest.mark.parametrize("payload", [b"", b"x", os.urandom(125)], ids=["empty", "1", "125"])
def test_ping_gets_pong_with_same_payload_raw(wisp_echo, payload):
    with RawWS(wisp_echo) as c:
        c.send_frame(0x9, payload)
        fin, op, got = c.recv_frame()
    assert (fin, op) == (True, 0xA), "expected a pong, got opcode %#x" % op
    assert got == payload


def test_client_close_1000_is_echoed(wisp_echo):
    ws = ws_connect(wisp_echo.url("/echo"))
    ws.send("bye soon")
    assert ws.recv(timeout=5) == "bye soon"
    ws.close(1000, "done")
    assert ws.protocol.close_rcvd is not None, "server did not answer our close"
    assert ws.protocol.close_rcvd.code == 1000


def test_client_close_raw_then_server_closes_tcp(wisp_echo):
    with RawWS(wisp_echo) as c:
        c.send_frame(0x8, struct.pack("!H", 1000) + b"bye")
        assert c.recv_close() == 1000
        # RFC 6455 §7.1.1: after the close handshake the server closes TCP first.
        assert c.at_eof(2), "server kept the TCP connection after the close handshake"
    assert_healthy(wisp_echo)


def test_oversize_message_closes_1009(start_wisp):
    server = start_wisp()  # default --max-message-bytes 65536
    with ws_connect(server.url("/echo")) as ws:
        ws.send("x" * 65536)  # at the limit: fine
        assert len(ws.recv(timeout=5)) == 65536
        ws.send("x" * 65537)
        assert closed_code(ws) == 1009
    assert_healthy(server)


def test_oversize_after_reassembly_closes_1009(start_wisp):
    server = start_wisp("--max-message-bytes", "1000")
    with RawWS(server) as c:
        c.send_frame(0x2, b"a" * 600, fin=False)
        c.send_frame(0x0, b"b" * 600, fin=True)
        assert c.recv_close() == 1009
    assert_healthy(server)


def test_invalid_utf8_text_closes_1007(wisp_echo):
    with RawWS(wisp_echo) as c:
        c.send_frame(0x1, b"valid then \xc3\x28 invalid")
        assert c.recv_close() == 1007
    assert_healthy(wisp_echo)


def test_invalid_utf8_fails_fast_mid_message(wisp_echo):
    """The first fragment is already invalid: close without waiting for the rest."""
    with RawWS(wisp_echo) as c:
        c.send_frame(0x1, b"ok \xff", fin=False)
        assert c.recv_close(timeout=3) == 1007
    assert_healthy(wisp_echo)


def test_utf8_split_across_fragments_is_valid(wisp_echo):
    euro = "€".encode()  # 3 bytes, split over two fragments
    with RawWS(wisp_echo) as c:
        c.send_frame(0x1, b"price " + euro[:1], fin=False)
        c.send_frame(0x0, euro[1:] + b" 5", fin=True)
        fin, op, payload = c.recv_frame()
    assert (fin, op, payload.decode()) == (True, 0x1, "price € 5")


def test_ping_between_fragments_is_answered(wisp_echo):
    with RawWS(wisp_echo) as c:
        c.send_frame(0x1, b"hello ", fin=False)
        c.send_frame(0x9, b"mid")
        c.send_frame(0x0, b"world", fin=True)
        first = c.recv_frame()
        second = c.recv_frame()
    assert first == (True, 0xA, b"mid")
    assert second == (True, 0x1, b"hello world")


@pytest.mark.parametrize("name,frames", [
    ("unmasked", [dict(opcode=0x1, payload=b"hi", mask=False)]),
    ("reserved opcode 3", [dict(opcode=0x3, payload=b"")]),
    ("reserved opcode 11", [dict(opcode=0xB, payload=b"")]),
    ("rsv1 without extension", [dict(opcode=0x1, payload=b"hi", rsv=4)]),
    ("ping over 125 bytes", [dict(opcode=0x9, payload=b"p" * 126)]),
    ("fragmented ping", [dict(opcode=0x9, payload=b"p", fin=False)]),
    ("continuation without start", [dict(opcode=0x0, payload=b"x")]),
    ("text inside a fragmented message", [dict(opcode=0x1, payload=b"a", fin=False),
                                          dict(opcode=0x1, payload=b"b")]),
    ("close code 999", [dict(opcode=0x8, payload=struct.pack("!H", 999))]),
    ("close code 1005", [dict(opcode=0x8, payload=struct.pack("!H", 1005))]),
    ("close with 1-byte payload", [dict(opcode=0x8, payload=b"\x03")]),
])
def test_protocol_violation_closes_1002(wisp_echo, name, frames):
    with RawWS(wisp_echo) as c:
        for f in frames:
            c.send_frame(f.pop("opcode"), f.pop("payload"), **f)
        assert c.recv_close() == 1002, name
    assert_healthy(wisp_echo)


def test_close_with_invalid_utf8_reason_is_refused(wisp_echo):
    # RFC 6455 §7.1.6 / Autobahn 7.5.1: protocol error or invalid-payload code
    with RawWS(wisp_echo) as c:
        c.send_frame(0x8, struct.pack("!H", 1000) + b"\xff\xfe")
        assert c.recv_close() in (1002, 1007)
    assert_healthy(wisp_echo)
