"""Connection tokens (`--auth token`), the metrics token and `wisp token` (docs/operations.md,
"Security model"; docs/protocol.md, "Tokens"). Tokens are minted by PyJWT, a JWT stack we did not
write, or crafted by hand where PyJWT refuses to (alg none, HS256 keyed with a public key)."""

import base64
import hashlib
import hmac
import json
import subprocess
import time

import jwt
import pytest
import websockets.exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from conftest import wisp_bin
from wisp_client import Chat, closed_code, http_request, recv_json, recv_type, ws_connect

SECRET = b"0123456789abcdef0123456789abcdef-test-secret"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(sub="alice", rooms=("lobby",), ttl=60, **extra):
    now = int(time.time())
    c = {"sub": sub, "rooms": list(rooms), "exp": now + ttl}
    c.update(extra)
    return c


def hs(c, key=SECRET):
    return jwt.encode(c, key, algorithm="HS256")


def upgrade_status(url, **kw):
    """The HTTP status an upgrade is refused with (fails if it is accepted)."""
    try:
        ws = ws_connect(url, **kw)
    except websockets.exceptions.InvalidStatus as e:
        return e.response.status_code
    ws.close()
    raise AssertionError("upgrade to %s was accepted" % url)


@pytest.fixture
def secret_file(tmp_path):
    p = tmp_path / "secret"
    p.write_bytes(SECRET + b"\n")
    return p


@pytest.fixture
def hs_wisp(start_wisp, secret_file):
    return start_wisp("--auth", "token", "--token-secret-file", secret_file, "--log", "debug")


def test_a_valid_token_joins_under_its_name(hs_wisp):
    token = hs(claims("alice"))
    # The path's name is ignored: the token's is used.
    with Chat(hs_wisp, "lobby", "mallory", "?token=" + token) as c:
        assert c.welcome["client_id"] == "alice"
        c.say("hi")
        ev = c.next_of("message")
        assert ev["client_id"] == "alice" and isinstance(ev["id"], int)
    assert token.encode() not in hs_wisp.read_log(), "the token was logged"


def test_a_second_connection_cannot_take_the_name(hs_wisp):
    alice = hs(claims("alice"))
    bob = hs(claims("bob"))
    with Chat(hs_wisp, "lobby", "x", "?token=" + alice) as a:
        # The same token again, while alice is in the room: 409, not `alice#2`.
        assert upgrade_status(hs_wisp.url("/ws/lobby/x?token=" + alice)) == 409
        # Another user asking for alice's name in the path joins under their own.
        with Chat(hs_wisp, "lobby", "alice", "?token=" + bob) as b:
            assert b.welcome["client_id"] == "bob"
            assert sorted(b.welcome["users"]) == ["alice", "bob"]
        a.say("still here")
        assert a.next_of("message")["client_id"] == "alice"
    # Once alice has left, her token joins again.
    deadline = time.monotonic() + 3
    while True:
        try:
            with Chat(hs_wisp, "lobby", "x", "?token=" + alice) as again:
                assert again.welcome["client_id"] == "alice"
            break
        except websockets.exceptions.InvalidStatus:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_rooms_outside_the_grant_are_refused(hs_wisp):
    token = hs(claims("carol", rooms=["lobby", "team-*"]))
    assert upgrade_status(hs_wisp.url("/ws/other/carol?token=" + token)) == 403
    assert upgrade_status(hs_wisp.url("/ws/lobby2/carol?token=" + token)) == 403
    with Chat(hs_wisp, "team-red", "carol", "?token=" + token) as c:
        assert c.welcome["room_id"] == "team-red"
    nothing = hs(claims("dave", rooms=[]))
    assert upgrade_status(hs_wisp.url("/ws/lobby/dave?token=" + nothing)) == 403


def test_bad_tokens_get_401(hs_wisp):
    now = int(time.time())
    good = hs(claims("erin"))
    header, payload, _sig = good.split(".")
    bad = {
        "none": "",
        "garbage": "not-a-token",
        "expired": hs(claims("erin", exp=now - 60)),
        "not yet valid": hs(claims("erin", nbf=now + 300)),
        "wrong key": hs(claims("erin"), key=b"another-secret-another-secret-xx"),
        "truncated": good[:-6],
        "alg none": "%s.%s." % (b64url(b'{"alg":"none","typ":"JWT"}'), payload),
        "HS512": jwt.encode(claims("erin"), SECRET, algorithm="HS512"),
    }
    for what, token in bad.items():
        query = "?token=" + token if token else ""
        assert upgrade_status(hs_wisp.url("/ws/lobby/erin" + query)) == 401, what
        assert upgrade_status(hs_wisp.url("/ws" + query)) == 401, what
        assert upgrade_status(hs_wisp.url("/echo" + query)) == 401, what
    _, _, metrics = http_request(hs_wisp, "GET", "/metrics")
    line = [l for l in metrics.decode().splitlines() if l.startswith("wisp_auth_refused_total ")]
    assert line and int(line[0].split()[1]) >= 3 * len(bad), line


def test_the_token_travels_in_a_header_or_a_subprotocol(hs_wisp):
    token = hs(claims("frank"))
    with ws_connect(hs_wisp.url("/ws/lobby/x"),
                    additional_headers={"Authorization": "Bearer " + token}) as ws:
        assert recv_json(ws)["client_id"] == "frank"
    with ws_connect(hs_wisp.url("/ws/lobby/x"), subprotocols=["wisp", token]) as ws:
        assert ws.subprotocol == "wisp"
        assert recv_json(ws)["client_id"] == "frank"
    with ws_connect(hs_wisp.url("/ws"), subprotocols=[token]) as ws:
        assert ws.subprotocol == token


def test_page_and_health_stay_open(hs_wisp, start_wisp):
    assert http_request(hs_wisp, "GET", "/")[0] == 200
    status, _, body = http_request(hs_wisp, "GET", "/healthz")
    assert status == 200 and json.loads(body)["auth"] == "token"
    assert "auth" not in json.loads(http_request(start_wisp(), "GET", "/healthz")[2])


def test_history_views_need_a_grant(hs_wisp):
    token = hs(claims("gina"))
    with Chat(hs_wisp, "lobby", "x", "?token=" + token) as c:
        c.say("hello")
        c.next_of("message")
    reader = hs(claims("reader", rooms=["lobby"], history=True))
    no_history = hs(claims("nohist", rooms=["lobby"]))
    other_room = hs(claims("other", rooms=["elsewhere"], history=True))
    for path in ("/rooms/lobby/messages", "/messages", "/rooms"):
        assert http_request(hs_wisp, "GET", path)[0] == 401, path
        assert http_request(hs_wisp, "GET", path + "?token=" + no_history)[0] == 403, path
    assert http_request(hs_wisp, "GET", "/rooms/lobby/messages?token=" + other_room)[0] == 403
    status, _, body = http_request(hs_wisp, "GET", "/rooms/lobby/messages",
                                   headers={"Authorization": "Bearer " + reader})
    assert status == 200
    assert [m["content"] for m in json.loads(body)["messages"]] == ["hello"]
    assert http_request(hs_wisp, "GET", "/rooms?token=" + reader)[0] == 200


def test_expiry_closes_with_4001_unless_refreshed(hs_wisp):
    short = hs(claims("hank", ttl=2))
    with Chat(hs_wisp, "lobby", "x", "?token=" + short) as c:
        started = time.monotonic()
        assert closed_code(c.ws, timeout=6) == 4001
        assert time.monotonic() - started < 4
    kept = hs(claims("ivy", ttl=2))
    with Chat(hs_wisp, "lobby", "x", "?token=" + kept) as c, \
            Chat(hs_wisp, "lobby", "y", "?token=" + hs(claims("watcher"))) as w:
        # A fresh token for someone else, or a bad one, is refused and changes nothing.
        c.say_json({"type": "refresh", "token": hs(claims("mallory"))})
        assert recv_type(c.ws, "error")["code"] == "bad_token"
        c.say_json({"type": "refresh", "token": hs(claims("ivy", ttl=60))})
        ack = recv_type(c.ws, "refreshed")
        assert ack["exp"] > time.time() + 30
        time.sleep(3.5)
        c.say("after the first expiry")
        ev = c.next_of("message")
        assert ev["content"] == "after the first expiry" and ev["client_id"] == "ivy"
        # Nobody saw ivy leave and come back.
        seen = []
        while True:
            try:
                seen.append(recv_json(w.ws, timeout=0.3))
            except TimeoutError:
                break
        assert not [e for e in seen if e.get("type") == "leave"], seen


def test_metrics_token(start_wisp, tmp_path):
    p = tmp_path / "metrics"
    p.write_text("scrape-me\n")
    w = start_wisp("--metrics-token-file", p)
    assert http_request(w, "GET", "/metrics")[0] == 401
    assert http_request(w, "GET", "/metrics", headers={"Authorization": "Bearer nope"})[0] == 401
    status, _, body = http_request(w, "GET", "/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert status == 200 and b"wisp_auth_refused_total 2" in body


def test_wisp_token_mints_what_the_daemon_accepts(hs_wisp, secret_file):
    out = subprocess.run([wisp_bin(), "token", "--secret-file", str(secret_file), "--sub", "jo",
                          "--rooms", "lobby,team-*", "--ttl", "60"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert decoded["sub"] == "jo" and decoded["rooms"] == ["lobby", "team-*"]
    with Chat(hs_wisp, "team-blue", "x", "?token=" + token) as c:
        assert c.welcome["client_id"] == "jo"


def pem_public(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("alg,make", [
    ("RS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ("ES256", lambda: ec.generate_private_key(ec.SECP256R1())),
    ("EdDSA", ed25519.Ed25519PrivateKey.generate),
])
def test_public_key_algorithms_with_rotation(start_wisp, tmp_path, alg, make):
    old, new, stranger = make(), make(), make()
    (tmp_path / "old.pem").write_bytes(pem_public(old))
    (tmp_path / "new.pem").write_bytes(pem_public(new))
    w = start_wisp("--auth", "token", "--token-alg", alg,
                   "--token-public-key", tmp_path / "old.pem",
                   "--token-public-key", tmp_path / "new.pem",
                   "--token-issuer", "backend", "--token-audience", "wisp")
    c = claims("kim", iss="backend", aud="wisp")
    for key in (old, new):
        with Chat(w, "lobby", "x", "?token=" + jwt.encode(c, key, algorithm=alg)) as chat:
            assert chat.welcome["client_id"] == "kim"
    assert upgrade_status(w.url("/ws/lobby/x?token=" + jwt.encode(c, stranger, algorithm=alg))) == 401
    wrong_iss = claims("kim", iss="someone", aud="wisp")
    assert upgrade_status(w.url("/ws/lobby/x?token=" + jwt.encode(wrong_iss, new, algorithm=alg))) == 401
    wrong_aud = claims("kim", iss="backend", aud="other")
    assert upgrade_status(w.url("/ws/lobby/x?token=" + jwt.encode(wrong_aud, new, algorithm=alg))) == 401
    # HS256 keyed with the public key (the classic confusion): refused, the algorithm is pinned.
    header = b64url(b'{"alg":"HS256","typ":"JWT"}')
    payload = b64url(json.dumps(c).encode())
    sig = hmac.new(pem_public(new), ("%s.%s" % (header, payload)).encode(), hashlib.sha256).digest()
    forged = "%s.%s.%s" % (header, payload, b64url(sig))
    assert upgrade_status(w.url("/ws/lobby/x?token=" + forged)) == 401


@pytest.mark.parametrize("args,needle", [
    (["--auth", "token"], "--token-secret-file"),
    (["--auth", "token", "--token-alg", "none"], "--token-alg"),
    (["--auth", "token", "--token-alg", "RS256"], "--token-public-key"),
])
def test_bad_token_options_exit_2(args, needle, tmp_path):
    out = subprocess.run([wisp_bin(), "--bind", "127.0.0.1:0", *args],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 2, out
    assert needle in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_short_secret_is_refused(tmp_path):
    p = tmp_path / "short"
    p.write_text("short\n")
    out = subprocess.run([wisp_bin(), "--bind", "127.0.0.1:0", "--auth", "token",
                          "--token-secret-file", str(p)], capture_output=True, text=True, timeout=10)
    assert out.returncode == 2 and "--token-secret-file" in out.stderr, out
