#!/usr/bin/env python3
"""Smoke-check a peer (or Wisp itself) on the benchmark endpoints.

usage: smoke.py URL [--floor]     e.g. smoke.py http://127.0.0.1:40123/

Needs `pip install websockets`. With --floor the room check expects the
floor's semantics (the raw payload relayed to the room), not JSON events.
Exits 0 and prints "N passed, 0 failed" when every check holds.
"""
import asyncio
import json
import re
import sys

import websockets

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


async def recv(ws, timeout=3.0):
    return await asyncio.wait_for(ws.recv(), timeout)


async def next_of_type(ws, typ):
    while True:
        ev = json.loads(await recv(ws))
        if ev.get("type") == typ:
            return ev


async def check_echo(base, floor):
    async with websockets.connect(base + "/echo") as ws:
        await ws.send("hello é")
        assert await recv(ws) == "hello é"
        await ws.send(b"\x00\x01binary\xff")
        assert await recv(ws) == b"\x00\x01binary\xff"
        big = "x" * 70000  # 64-bit length frame
        await ws.send(big)
        assert await recv(ws) == big
        for i in range(50):  # pipelined
            await ws.send(f"m{i}")
        for i in range(50):
            assert await recv(ws) == f"m{i}"


async def check_global(base, floor):
    conns = [await websockets.connect(base + "/ws") for _ in range(3)]
    try:
        await asyncio.sleep(0.1)
        await conns[1].send("to everyone")
        for c in conns:
            assert await recv(c) == "to everyone"
        await conns[2].send('{"raw":"json stays unchanged"}')
        for c in conns:
            assert await recv(c) == '{"raw":"json stays unchanged"}'
    finally:
        for c in conns:
            await c.close()


async def check_room(base, floor):
    a = await websockets.connect(base + "/ws/lobby/alice")
    b = await websockets.connect(base + "/ws/lobby/bob")
    other = await websockets.connect(base + "/ws/elsewhere/carol")
    try:
        if floor:
            await asyncio.sleep(0.1)
            await a.send("raw relay")
            assert await recv(a) == "raw relay"
            assert await recv(b) == "raw relay"
        else:
            wa = json.loads(await recv(a))
            wb = json.loads(await recv(b))
            assert wa["type"] == "welcome" and wa["client_id"] == "alice", wa
            assert wb["type"] == "welcome" and wb["room_id"] == "lobby", wb
            assert sorted(wb["users"]) == ["alice", "bob"], wb
            assert wb["history"] == [] and wb["ttl_s"] == 60 and "epoch" in wb and wb["recovered"] is True
            join = await next_of_type(a, "join")
            assert join["client_id"] == "bob", join
            await b.send("  plain text  ")
            await a.send('{"content":"from json"}')
            got = {}
            for who, ws in (("a", a), ("b", b)):
                got[who] = [await next_of_type(ws, "message") for _ in range(2)]
            for evs in got.values():
                assert [e["id"] for e in evs] == [1, 2] or evs[0]["id"] < evs[1]["id"], evs
                assert {e["content"] for e in evs} == {"plain text", "from json"}, evs
                for e in evs:
                    assert e["room_id"] == "lobby" and TS.match(e["timestamp"]), e
                    assert e["client_id"] == ("bob" if e["content"] == "plain text" else "alice"), e
            # carol, in another room, hears nothing (only her welcome)
            wc = json.loads(await recv(other))
            assert wc["type"] == "welcome" and wc["users"] == ["carol"], wc
        try:
            extra = await asyncio.wait_for(other.recv(), 0.3)
            if not floor:
                raise AssertionError(f"room leak: {extra!r}")
            raise AssertionError(f"room leak: {extra!r}")
        except asyncio.TimeoutError:
            pass
        if not floor:
            # duplicate name gets a distinct one
            async with websockets.connect(base + "/ws/lobby/alice") as a2:
                w = json.loads(await recv(a2))
                assert w["client_id"] != "alice" and w["client_id"].startswith("alice"), w
            await b.close()
            leave = await next_of_type(a, "leave")
            assert leave["client_id"] in ("bob",) or leave["client_id"].startswith("alice"), leave
    finally:
        for c in (a, b, other):
            await c.close()


async def main():
    args = [x for x in sys.argv[1:] if not x.startswith("--")]
    floor = "--floor" in sys.argv
    base = args[0].rstrip("/").replace("http://", "ws://", 1)
    passed = failed = 0
    for check in (check_echo, check_global, check_room):
        try:
            await asyncio.wait_for(check(base, floor), 15)
            print(f"ok   {check.__name__}")
            passed += 1
        except Exception as e:  # noqa: BLE001
            print(f"FAIL {check.__name__}: {type(e).__name__}: {e}")
            failed += 1
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    asyncio.run(main())
