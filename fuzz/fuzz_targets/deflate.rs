//! permessage-deflate: `negotiate` on arbitrary `Sec-WebSocket-Extensions` values, and the shared
//! inflater on arbitrary compressed payloads under a limit, reused across inputs as the reactor
//! reuses it across connections.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wisp::protocol::deflate::{negotiate, Inflater};
use wisp::protocol::ProtocolError;

fuzz_target!(|data: &[u8]| {
    // Header lines split at the input's newlines.
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').take(4).collect();
    if let Some(a) = negotiate(lines.iter().copied()) {
        let answer = a.response();
        assert!(answer.starts_with("permessage-deflate; server_no_context_takeover"));
        assert!(a.server_max_window_bits.is_none_or(|b| (8..=15).contains(&b)));
    }
    let max = data.first().map_or(0, |&b| usize::from(b) * 64);
    let mut inflater = Inflater::new();
    for _ in 0..2 {
        match inflater.inflate(data, max) {
            Ok(out) => assert!(out.len() <= max),
            Err(e) => assert!(matches!(e, ProtocolError::BadDeflate | ProtocolError::MessageTooBig)),
        }
    }
});
