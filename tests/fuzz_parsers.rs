//! Property tests for the two parsers that face the network: the HTTP request
//! head (`handshake::parse` + `check_upgrade`) and the frame decoder
//! (`WebSocket::read`). Arbitrary bytes in arbitrary chunkings never panic and
//! always make progress or ask for more; valid frame sequences decode to the
//! same messages under any fragmentation and chunking. permessage-deflate: any
//! compressed payload inflates within the limit or fails with 1007/1009, and
//! compressed messages survive any fragmentation.
//!
//! Crashes found by `scripts/fuzz.sh` become regression tests at the end of
//! this file, named for the failure.

use proptest::prelude::*;

use wisp::protocol::frame::{encode_header, Fin, MAX_HEADER};
use wisp::protocol::handshake::{self, accept_key, check_upgrade, HandshakeError, MAX_HEAD};
use wisp::protocol::mask::unmask;
use wisp::protocol::{CloseCode, Decoded, Event, OpCode, ProtocolError, Role, WebSocket};

/// An owned event, to compare runs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

fn own(ev: Event<'_>) -> Ev {
    match ev {
        Event::Text(t) => Ev::Text(t.to_string()),
        Event::Binary(b) => Ev::Binary(b.to_vec()),
        Event::Ping(p) => Ev::Ping(p.to_vec()),
        Event::Pong(p) => Ev::Pong(p.to_vec()),
        Event::Close { code, reason } => Ev::Close(code.map(CloseCode::as_u16), reason.to_string()),
        // `drive` never negotiates permessage-deflate, so RSV1 is refused before this.
        Event::Compressed(..) => unreachable!("a compressed message without deflate"),
    }
}

/// Feeds `input` split at `cuts` the way the reactor does: keep the unconsumed
/// bytes, append the next read, call `read` until it asks for more. Checks the
/// progress contract on every call; returns the events and the error, if any.
fn drive(role: Role, max: usize, input: &[u8], cuts: &[usize]) -> (Vec<Ev>, Option<ProtocolError>) {
    let mut ws = WebSocket::new(role, max);
    let mut pending: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    bounds.push(input.len());
    bounds.sort_unstable();
    let mut start = 0;
    for end in bounds {
        pending.extend_from_slice(&input[start..end]);
        start = end;
        // Each call must consume a byte or yield an event; an event without
        // consumed bytes may happen at most once in a row.
        let mut idle_events = 0;
        loop {
            let len = pending.len();
            match ws.read(&mut pending) {
                Err(e) => return (events, Some(e)),
                Ok((n, ev)) => {
                    assert!(n <= len, "consumed {n} of {len} bytes");
                    let got = ev.map(own);
                    match &got {
                        Some(Ev::Text(t)) => assert!(t.len() <= max, "message over the limit"),
                        Some(Ev::Binary(b)) => assert!(b.len() <= max, "message over the limit"),
                        _ => {}
                    }
                    pending.drain(..n);
                    match (n, got) {
                        (0, None) => break,
                        (0, Some(ev)) => {
                            idle_events += 1;
                            assert!(idle_events <= 1, "events without progress");
                            events.push(ev);
                        }
                        (_, ev) => {
                            idle_events = 0;
                            events.extend(ev);
                        }
                    }
                }
            }
        }
    }
    (events, None)
}

fn cuts_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0usize..4096, 0..24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_into_read_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        cuts in cuts_strategy(),
        server in any::<bool>(),
        max in prop_oneof![Just(0usize), 1usize..200, Just(65536)],
    ) {
        let role = if server { Role::Server } else { Role::Client };
        drive(role, max, &bytes, &cuts);
    }

    #[test]
    fn frame_shaped_bytes_into_read_never_panic(
        // Plausible first bytes (valid opcodes, FIN, the mask bit right for
        // the role) so the decoder gets past the header more often.
        frames in prop::collection::vec(
            (prop::sample::select(vec![0x00u8, 0x01, 0x02, 0x80, 0x81, 0x82, 0x88, 0x89, 0x8A]),
             0u8..128, prop::collection::vec(any::<u8>(), 0..300)),
            1..12),
        cuts in cuts_strategy(),
        server in any::<bool>(),
    ) {
        let mut input = Vec::new();
        for (b0, b1, rest) in &frames {
            input.push(*b0);
            input.push(if server { b1 | 0x80 } else { *b1 });
            input.extend_from_slice(rest);
        }
        let role = if server { Role::Server } else { Role::Client };
        let whole = drive(role, 1000, &input, &[]);
        let split = drive(role, 1000, &input, &cuts);
        // Chunking changes nothing once all bytes are in, except that bad
        // UTF-8 may be caught before a later frame's events would be seen.
        if whole.1.is_none() && split.1.is_none() {
            prop_assert_eq!(whole.0, split.0);
        } else {
            prop_assert_eq!(whole.1.is_some(), split.1.is_some());
        }
    }
}

/// One message of a structured stream.
#[derive(Debug, Clone)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
}

fn msg_strategy() -> impl Strategy<Value = Msg> {
    prop_oneof![
        ".{0,200}".prop_map(Msg::Text),
        prop::collection::vec(any::<u8>(), 0..400).prop_map(Msg::Binary),
        // Around the 125/126 and 65535/65536 length encodings.
        (120usize..132).prop_map(|n| Msg::Binary(vec![7; n])),
        (65530usize..65540).prop_map(|n| Msg::Binary(vec![9; n])),
    ]
}

/// A message, where to split it (fractions of its length), where to put pings
/// (after which fragments), and its masking key.
type Planned = (Msg, Vec<u16>, Vec<bool>, [u8; 4]);

/// One frame on the wire, masked with `key` when `key` is given.
fn frame(fin: bool, opcode: OpCode, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
    let mut h = [0u8; MAX_HEADER];
    let f = if fin { Fin::Final } else { Fin::More };
    let n = encode_header(&mut h, f, opcode, payload.len() as u64, key);
    let mut out = h[..n].to_vec();
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(k) = key {
        unmask(&mut out[start..], k, 0);
    }
    out
}

/// Encodes `msgs`, each split at `splits` (fractions), with pings between
/// fragments; returns the wire bytes and the events a decoder must produce.
fn encode_stream(msgs: &[Planned], masked: bool) -> (Vec<u8>, Vec<Ev>) {
    let mut wire = Vec::new();
    let mut want = Vec::new();
    for (i, (msg, splits, pings, key)) in msgs.iter().enumerate() {
        let key = masked.then_some(*key);
        let (bytes, op, ev) = match msg {
            Msg::Text(t) => (t.as_bytes().to_vec(), OpCode::Text, Ev::Text(t.clone())),
            Msg::Binary(b) => (b.clone(), OpCode::Binary, Ev::Binary(b.clone())),
        };
        // Split points anywhere, UTF-8 sequences included.
        let mut points: Vec<usize> = splits
            .iter()
            .map(|&s| s as usize * bytes.len() / u16::MAX as usize)
            .collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        let pieces: Vec<&[u8]> = points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect();
        for (j, piece) in pieces.iter().enumerate() {
            let fin = j + 1 == pieces.len();
            let opcode = if j == 0 { op } else { OpCode::Continue };
            wire.extend(frame(fin, opcode, piece, key));
            if fin {
                want.push(ev.clone());
            }
            if pings.get(j).copied().unwrap_or(false) {
                let payload = format!("p{i}.{j}").into_bytes();
                wire.extend(frame(true, OpCode::Ping, &payload, key));
                want.push(Ev::Ping(payload));
            }
        }
    }
    (wire, want)
}

fn stream_strategy() -> impl Strategy<Value = Vec<Planned>> {
    prop::collection::vec(
        (
            msg_strategy(),
            prop::collection::vec(any::<u16>(), 0..6),
            prop::collection::vec(any::<bool>(), 0..7),
            any::<[u8; 4]>(),
        ),
        1..8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn valid_frames_decode_to_the_same_messages_under_any_chunking(
        msgs in stream_strategy(),
        cuts in prop::collection::vec(0usize..200_000, 0..32),
        server in any::<bool>(),
    ) {
        let (wire, want) = encode_stream(&msgs, server);
        let role = if server { Role::Server } else { Role::Client };
        let (got, err) = drive(role, 1 << 20, &wire, &cuts);
        prop_assert_eq!(err, None);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn utf8_verdict_matches_std_under_any_fragmentation(
        bytes in prop::collection::vec(prop_oneof![
            any::<u8>(),
            prop::sample::select(vec![0xC3u8, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80, 0xED, 0xA0]),
        ], 0..64),
        splits in prop::collection::vec(any::<u16>(), 0..6),
        cuts in prop::collection::vec(0usize..200, 0..16),
        key in any::<[u8; 4]>(),
    ) {
        let (wire, _) = encode_stream(&[(Msg::Binary(bytes.clone()), splits, vec![], key)], true);
        // The same frames, but as text: flip the first opcode.
        let mut wire = wire;
        wire[0] = (wire[0] & 0xF0) | 0x01;
        let (got, err) = drive(Role::Server, 1 << 20, &wire, &cuts);
        match std::str::from_utf8(&bytes) {
            Ok(s) => {
                prop_assert_eq!(err, None);
                prop_assert_eq!(got, vec![Ev::Text(s.to_string())]);
            }
            Err(_) => prop_assert_eq!(err, Some(ProtocolError::InvalidUtf8)),
        }
    }

    #[test]
    fn oversize_is_refused_whatever_the_fragmentation(
        len in 1usize..3000,
        max in 1usize..2000,
        splits in prop::collection::vec(any::<u16>(), 0..5),
        cuts in prop::collection::vec(0usize..4000, 0..8),
    ) {
        let (wire, want) =
            encode_stream(&[(Msg::Binary(vec![1; len]), splits, vec![], [1, 2, 3, 4])], true);
        let (got, err) = drive(Role::Server, max, &wire, &cuts);
        if len > max {
            prop_assert_eq!(err, Some(ProtocolError::MessageTooBig));
        } else {
            prop_assert_eq!(err, None);
            prop_assert_eq!(got, want);
        }
    }
}

/// Parses `buf` as the reactor does, growing the buffer one chunk at a time:
/// every prefix must parse, be incomplete, or fail; never panic.
fn parse_prefixes(buf: &[u8], cuts: &[usize]) {
    let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(buf.len())).collect();
    bounds.push(buf.len());
    bounds.sort_unstable();
    for end in bounds {
        let prefix = &buf[..end];
        match handshake::parse(prefix) {
            Ok(Decoded::Done((req, n))) => {
                assert!(n <= prefix.len() && n <= MAX_HEAD);
                assert!(req.target.starts_with('/'));
                let _ = req.path();
                let _ = req.query();
                if let Ok(accept) = check_upgrade(&req) {
                    assert_eq!(accept, accept_key(req.key.unwrap()));
                }
                return;
            }
            Ok(Decoded::NeedMore) => assert!(prefix.len() < MAX_HEAD),
            Err(e) => {
                let _ = e.status();
                return;
            }
        }
    }
}

fn header_strategy() -> impl Strategy<Value = String> {
    let names = prop::sample::select(vec![
        "Host",
        "Upgrade",
        "Connection",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Origin",
        "Content-Length",
        "Transfer-Encoding",
        "X-Any",
    ]);
    let values = prop::sample::select(vec![
        "websocket",
        "Upgrade",
        "keep-alive, Upgrade",
        "close",
        "dGhlIHNhbXBsZSBub25jZQ==",
        "c2hvcnQ=",
        "13",
        "8",
        "0",
        "5",
        "chunked",
        "",
        "  spaced  ",
        "\u{e9}",
        "http://a.example",
    ]);
    (names, values).prop_map(|(n, v)| format!("{n}: {v}\r\n"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_into_handshake_parse_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..10_000),
        cuts in prop::collection::vec(0usize..10_000, 0..16),
    ) {
        parse_prefixes(&bytes, &cuts);
    }

    #[test]
    fn request_shaped_bytes_into_handshake_parse_never_panic(
        method in prop::sample::select(vec!["GET", "HEAD", "POST", "get", "G\u{0}T"]),
        target in "(/[a-z%0-9?=&]{0,20}){0,3}|[a-z*]{0,5}",
        version in prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 x"]),
        headers in prop::collection::vec(header_strategy(), 0..60),
        tail in prop::collection::vec(any::<u8>(), 0..8),
        cuts in prop::collection::vec(0usize..2000, 0..8),
    ) {
        let mut req = format!("{method} {target} {version}\r\n{}\r\n", headers.concat()).into_bytes();
        req.extend_from_slice(&tail);
        parse_prefixes(&req, &cuts);
    }

    #[test]
    fn complete_good_upgrades_always_pass(
        path in "/[a-z]{1,10}(/[a-z]{1,10}){0,2}",
        key in any::<[u8; 16]>(),
        extra in prop::collection::vec(header_strategy(), 0..10),
    ) {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        // Headers we add first; random extras after may only add, not override,
        // so keep extras away from the upgrade headers.
        let extra: String = extra
            .into_iter()
            .filter(|h| h.starts_with("Host") || h.starts_with("X-Any") || h.starts_with("Origin"))
            .collect();
        let req = format!(
            "GET {path} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        match handshake::parse(req.as_bytes()) {
            Ok(Decoded::Done((r, n))) => {
                prop_assert_eq!(n, req.len());
                prop_assert_eq!(r.path(), path.as_str());
                prop_assert_eq!(check_upgrade(&r), Ok(accept_key(key.as_bytes())));
            }
            other => prop_assert!(false, "{:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn head_over_8k_is_431_whatever_the_chunking() {
    let mut req = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', MAX_HEAD));
    for end in [MAX_HEAD - 1, MAX_HEAD, MAX_HEAD + 10] {
        let r = handshake::parse(&req[..end]);
        if end >= MAX_HEAD {
            assert_eq!(r.err(), Some(HandshakeError::HeadTooLarge));
        } else {
            assert!(matches!(r, Ok(Decoded::NeedMore)));
        }
    }
}

// Regression tests from `scripts/fuzz.sh` crashes go below, one per failure.

/// permessage-deflate: arbitrary bytes as a compressed payload never panic the inflater and never
/// come out over the limit; compressed messages split into any fragments come back whole.
mod deflate {
    use proptest::prelude::*;

    use wisp::protocol::deflate::{Deflater, Inflater};
    use wisp::protocol::frame::{encode_header, Fin, MAX_HEADER};
    use wisp::protocol::mask::unmask;
    use wisp::protocol::websocket::inflate_message;
    use wisp::protocol::{Event, MessageKind, OpCode, ProtocolError, Role, WebSocket};

    const KEY: [u8; 4] = [1, 2, 3, 4];

    /// A masked client frame with RSV1 as given.
    fn frame(fin: Fin, opcode: OpCode, rsv1: bool, payload: &[u8]) -> Vec<u8> {
        let mut h = [0u8; MAX_HEADER];
        let n = encode_header(&mut h, fin, opcode, payload.len() as u64, Some(KEY));
        if rsv1 {
            h[0] |= 0x40;
        }
        let mut out = h[..n].to_vec();
        let mut p = payload.to_vec();
        unmask(&mut p, KEY, 0);
        out.extend_from_slice(&p);
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_compressed_payloads_never_panic(
            payload in prop::collection::vec(any::<u8>(), 0..2048),
            max in prop_oneof![Just(0usize), 1usize..300, Just(65536)],
            text in any::<bool>(),
        ) {
            let kind = if text { MessageKind::Text } else { MessageKind::Binary };
            let mut inflater = Inflater::new();
            match inflate_message(&mut inflater, kind, &payload, max) {
                Ok(Event::Text(t)) => prop_assert!(t.len() <= max),
                Ok(Event::Binary(b)) => prop_assert!(b.len() <= max),
                Ok(other) => prop_assert!(false, "{other:?}"),
                Err(e) => prop_assert!(matches!(
                    e,
                    ProtocolError::BadDeflate | ProtocolError::MessageTooBig | ProtocolError::InvalidUtf8
                )),
            }
        }

        #[test]
        fn compressed_fragments_round_trip(
            text in "[a-z ]{200,3000}",
            cuts in prop::collection::vec(1usize..400, 0..8),
            level in 2u32..10,
        ) {
            let mut z = Vec::new();
            prop_assume!(Deflater::new(level).compress(text.as_bytes(), &mut z));
            // RSV1 on the first fragment only (RFC 7692 §6.1).
            let mut wire = Vec::new();
            let mut rest = &z[..];
            let mut first = true;
            for &cut in &cuts {
                if cut >= rest.len() {
                    break;
                }
                let op = if first { OpCode::Text } else { OpCode::Continue };
                wire.extend(frame(Fin::More, op, first, &rest[..cut]));
                rest = &rest[cut..];
                first = false;
            }
            let op = if first { OpCode::Text } else { OpCode::Continue };
            wire.extend(frame(Fin::Final, op, first, rest));
            let mut ws = WebSocket::new(Role::Server, 1 << 16).with_deflate();
            let mut inflater = Inflater::new();
            let mut at = 0;
            let mut got = None;
            while at < wire.len() {
                let (n, ev) = ws.read(&mut wire[at..]).unwrap();
                at += n;
                if let Some(Event::Compressed(kind, payload)) = ev {
                    let ev = inflate_message(&mut inflater, kind, payload, 1 << 16).unwrap();
                    got = Some(format!("{ev:?}"));
                }
            }
            prop_assert_eq!(got, Some(format!("{:?}", Event::Text(&text))));
        }
    }
}
