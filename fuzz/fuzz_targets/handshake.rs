//! The HTTP request head: `handshake::parse` on every prefix the reactor may
//! see, then `check_upgrade`, the router and name cleaning on what parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wisp::chat::clean_name;
use wisp::http::{route, Route};
use wisp::protocol::handshake::{accept_key, check_upgrade, parse, MAX_HEAD};
use wisp::protocol::Decoded;

fuzz_target!(|data: &[u8]| {
    // The whole input, and a prefix cut where the input says.
    let cut = data
        .first()
        .map_or(0, |&b| usize::from(b) * data.len() / 256);
    for buf in [&data[..cut], data] {
        match parse(buf) {
            Ok(Decoded::Done((req, n))) => {
                assert!(n <= buf.len() && n <= MAX_HEAD);
                if let Ok(accept) = check_upgrade(&req) {
                    assert_eq!(accept, accept_key(req.key.unwrap()));
                }
                match route(req.path(), req.query(), true) {
                    Route::Room { room, client, .. } => {
                        let room = clean_name(room, "general");
                        let client = clean_name(client, "anonymous");
                        assert!(!room.is_empty() && room.chars().count() <= 64);
                        assert!(!client.is_empty() && client.chars().count() <= 64);
                        assert!(!room.contains('/') && !room.chars().any(char::is_control));
                    }
                    Route::RoomMessages { room, .. } => {
                        let _ = clean_name(room, "general");
                    }
                    _ => {}
                }
            }
            Ok(Decoded::NeedMore) => assert!(buf.len() < MAX_HEAD),
            Err(e) => {
                let _ = e.status();
            }
        }
    }
});
