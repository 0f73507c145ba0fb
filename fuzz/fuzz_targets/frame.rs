//! `WebSocket::read` over arbitrary bytes, both roles, fed in chunks the way
//! the reactor feeds it: keep the unconsumed bytes, append the next read.
//!
//! Input layout: byte 0 picks the role (bit 0) and the message limit (bits
//! 1-2); byte 1 seeds the chunk sizes; the rest is the wire.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wisp::protocol::{Event, Role, WebSocket};

fuzz_target!(|data: &[u8]| {
    let [mode, seed, wire @ ..] = data else {
        return;
    };
    let role = if mode & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let max = [0usize, 125, 4096, 1 << 20][usize::from(mode >> 1 & 3)];
    let mut ws = WebSocket::new(role, max);
    let mut pending: Vec<u8> = Vec::new();
    let mut rest = wire;
    let mut step = usize::from(*seed) + 1;
    while !rest.is_empty() {
        let take = step.min(rest.len());
        pending.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        step = step * 7 % 257 + 1;
        let mut idle_events = 0;
        loop {
            let len = pending.len();
            let (n, ev) = match ws.read(&mut pending) {
                Ok(r) => r,
                Err(_) => return,
            };
            assert!(n <= len);
            let had_event = ev.is_some();
            if let Some(Event::Text(t)) = &ev {
                assert!(t.len() <= max);
            }
            if let Some(Event::Binary(b)) = &ev {
                assert!(b.len() <= max);
            }
            pending.drain(..n);
            match (n, had_event) {
                (0, false) => break,
                (0, true) => {
                    idle_events += 1;
                    assert!(idle_events <= 1, "events without progress");
                }
                _ => idle_events = 0,
            }
        }
    }
});
