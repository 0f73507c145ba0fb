//! The JSON text the chat sends: room events (SPEC §4.2) and the chat's HTTP views (SPEC §3).
//!
//! Owns the exact shapes. The events sent to a whole room (`message`, `join`, `leave`) are written by
//! hand, straight into their WebSocket frame ([`EventFrame`]), one buffer shared by every recipient and
//! by the history and reused once the history lets it go (`FramePool`), with no `fmt` or serde
//! machinery on the path every message takes (it was a third of the user-space instructions per
//! message before). Their string escaping is the
//! same as serde_json's, which a property test checks. Everything else (welcome, error, the HTTP
//! views) goes through serde_json; already encoded `message` events are spliced into `welcome` and
//! `GET /rooms/{room}/messages` rather than serialised twice. Sending frames is the reactor's job.

use serde::Serialize;

use super::time::{isoformat_bytes, rfc3339_bytes, unix_seconds};
use super::Micros;
use crate::protocol::frame::SharedFrame;

pub(crate) use super::frames::{FramePool, TimeForm};

/// Why a room or global message was refused; the `code` of an `error` event (SPEC §4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    /// The sender's token bucket is empty (`--rate-limit`, SPEC §4.3).
    RateLimited,
    /// A JSON object without a string `content` (SPEC §4.4).
    BadRequest,
}

impl ErrorCode {
    fn as_str(self) -> &'static str {
        match self {
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BadRequest => "bad_request",
        }
    }
}

/// `join` or `leave`: the two events with the same fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    /// Someone entered the room.
    Join,
    /// Someone left the room.
    Leave,
}

#[derive(Serialize)]
struct ErrorEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    message: &'a str,
}

/// The `welcome` event without `history`, which is spliced in by [`with_raw_array`].
#[derive(Serialize)]
struct WelcomeHead<'a, U: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    room_id: &'a str,
    client_id: &'a str,
    users: U,
    ttl_s: u64,
    epoch: &'a str,
    recovered: bool,
    /// Written only when `false`: `history` was cut, and the rest follows as `message` events.
    #[serde(skip_serializing_if = "is_true")]
    history_complete: bool,
}

/// `GET /rooms/{room}/messages` without `messages`, which is spliced in by [`with_raw_array`].
#[derive(Serialize)]
struct RoomMessagesHead<'a> {
    room_id: &'a str,
    ttl_s: u64,
    /// Written only when `true`: the page was cut, more messages follow `?since=` the last id.
    #[serde(skip_serializing_if = "is_false")]
    more: bool,
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Serialising plain structs of strings and numbers into a String cannot fail.
    serde_json::to_string(value).expect("bug: chat event failed to serialise")
}

/// One event as a complete, unmasked WebSocket text frame, encoded once: the same bytes go into every
/// recipient's output queue and into the room's history, each holding a reference.
pub type EventFrame = SharedFrame;

/// `{"type":"message","id","room_id","client_id","content","timestamp"}`.
pub(crate) fn message(
    pool: &mut FramePool,
    id: u64,
    room_id: &str,
    client_id: &str,
    content: &str,
    at: Micros,
) -> EventFrame {
    room_event(pool, at, |out| {
        out.extend_from_slice(br#"{"type":"message","id":"#);
        push_u64(out, id);
        out.push(b',');
        push_room_and_client(out, room_id, client_id);
        out.extend_from_slice(br#","content":"#);
        push_json_str(out, content);
    })
}

/// `{"type":"join"|"leave","room_id","client_id","timestamp"}`.
pub(crate) fn presence(
    pool: &mut FramePool,
    kind: Presence,
    room_id: &str,
    client_id: &str,
    at: Micros,
) -> EventFrame {
    room_event(pool, at, |out| {
        out.extend_from_slice(match kind {
            Presence::Join => br#"{"type":"join","#,
            Presence::Leave => br#"{"type":"leave","#,
        });
        push_room_and_client(out, room_id, client_id);
    })
}

/// `{"type":"system","room_id","client_id":"system","content","timestamp"}`: a line the seed rooms
/// app's client draws as a card (`--compat fastapi`), in the field order of its `event()`.
pub(crate) fn system(pool: &mut FramePool, room_id: &str, content: &str, at: Micros) -> EventFrame {
    room_event(pool, at, |out| {
        out.extend_from_slice(br#"{"type":"system","room_id":"#);
        push_json_str(out, room_id);
        out.extend_from_slice(br#","client_id":"system","content":"#);
        push_json_str(out, content);
    })
}

/// `{"type":"presence","users":[...],"timestamp"}`: the seed rooms app's online list
/// (`--compat fastapi`). As long as the room's list of names: O(members).
pub(crate) fn presence_list<'u>(
    pool: &mut FramePool,
    users: impl Iterator<Item = &'u str>,
    at: Micros,
) -> EventFrame {
    room_event(pool, at, |out| {
        out.extend_from_slice(br#"{"type":"presence","users":["#);
        for (i, name) in users.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_json_str(out, name);
        }
        out.push(b']');
    })
}

/// `{"type":"typing","room_id","client_id","timestamp"}`: `client_id` is typing (never stored).
pub(crate) fn typing(
    pool: &mut FramePool,
    room_id: &str,
    client_id: &str,
    at: Micros,
) -> EventFrame {
    room_event(pool, at, |out| {
        out.extend_from_slice(br#"{"type":"typing","#);
        push_room_and_client(out, room_id, client_id);
    })
}

/// A room event framed in `pool`: `write` puts every field but the last, then
/// [`push_timestamp_field`] adds `timestamp` (in the pool's [`TimeForm`]) and closes the object.
fn room_event(pool: &mut FramePool, at: Micros, write: impl FnOnce(&mut Vec<u8>)) -> EventFrame {
    let times = pool.times;
    pool.build(|out| {
        write(out);
        push_timestamp_field(out, at, times);
    })
}

/// `"room_id":ROOM,"client_id":CLIENT`: the two fields every event about one member has
/// (`message`, `join`, `leave`, `typing`), in that order.
fn push_room_and_client(out: &mut Vec<u8>, room_id: &str, client_id: &str) {
    out.extend_from_slice(br#""room_id":"#);
    push_json_str(out, room_id);
    out.extend_from_slice(br#","client_id":"#);
    push_json_str(out, client_id);
}

/// `,"timestamp":"…"}`: the last field of the room events.
fn push_timestamp_field(out: &mut Vec<u8>, at: Micros, times: TimeForm) {
    out.extend_from_slice(br#","timestamp":""#);
    match times {
        TimeForm::Rfc3339 => out.extend_from_slice(&rfc3339_bytes(at)),
        TimeForm::Python => {
            let (bytes, len) = isoformat_bytes(at);
            out.extend_from_slice(&bytes[..len]);
        }
    }
    out.extend_from_slice(br#""}"#);
}

/// `n` in decimal.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20]; // u64::MAX has 20 digits
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `s` as a JSON string, escaped exactly as serde_json does: `"` and `\\` with a backslash, the
/// control characters U+0000–U+001F as `\b \t \n \f \r` or `\u00XX`, everything else as is
/// (JSON text is UTF-8, so nothing else needs escaping). The scan goes eight bytes at a time
/// ([`word_needs_escape`]) and runs without escapes are copied whole: chat text rarely has any.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut run = 0; // start of the bytes not yet copied
    let mut i = 0;
    while i < bytes.len() {
        if let Some(word) = bytes.get(i..i + 8) {
            let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
            if !word_needs_escape(word) {
                i += 8;
                continue;
            }
        }
        // This word (or the short tail) has something to escape: byte by byte.
        let end = (i + 8).min(bytes.len());
        for (k, &b) in bytes[i..end].iter().enumerate() {
            if byte_needs_escape(b) {
                let j = i + k;
                out.extend_from_slice(&bytes[run..j]);
                push_escape(out, b);
                run = j + 1;
            }
        }
        i = end;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

fn byte_needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Whether any of the eight bytes of `w` is below 0x20, `"` or `\\` (the classic SWAR tests:
/// `(x - 0x01…) & !x & 0x80…` is non-zero exactly when some byte of `x` is zero, and with
/// `0x20…` in place of `0x01…` when some byte is below 0x20).
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    let quote = has_zero(w ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(w ^ (ONES * u64::from(b'\\')));
    control | quote | backslash != 0
}

/// The escape sequence for a byte [`byte_needs_escape`] accepted.
fn push_escape(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'"' => out.extend_from_slice(br#"\""#),
        b'\\' => out.extend_from_slice(br"\\"),
        0x08 => out.extend_from_slice(br"\b"),
        b'\t' => out.extend_from_slice(br"\t"),
        b'\n' => out.extend_from_slice(br"\n"),
        0x0c => out.extend_from_slice(br"\f"),
        b'\r' => out.extend_from_slice(br"\r"),
        _ => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 0xf)],
        ]),
    }
}

/// `{"type":"error","code","message"}`.
pub(crate) fn error(code: ErrorCode, message: &str) -> String {
    to_json(&ErrorEvent {
        kind: "error",
        code: code.as_str(),
        message,
    })
}

#[derive(Serialize)]
struct CompatErrorEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    message: &'a str,
    client_id: &'static str,
    content: &'a str,
    timestamp: &'a str,
}

/// An `error` event that the seed rooms app's client can draw (`--compat fastapi`): it draws every
/// event but `presence` as a card of `content` by `client_id`, so the error carries its text there
/// too, from `system`, with a timestamp in Python's form.
pub(crate) fn compat_error(code: ErrorCode, message: &str, at: Micros) -> String {
    let (bytes, len) = isoformat_bytes(at);
    to_json(&CompatErrorEvent {
        kind: "error",
        code: code.as_str(),
        message,
        client_id: "system",
        content: message,
        timestamp: std::str::from_utf8(&bytes[..len]).expect("bug: timestamp is not ASCII"),
    })
}

/// The fields of a `welcome` event other than `history`.
pub(crate) struct Welcome<'a, U> {
    pub(crate) room_id: &'a str,
    pub(crate) client_id: &'a str,
    /// Names now in the room, the joiner included.
    pub(crate) users: U,
    pub(crate) ttl_s: u64,
    pub(crate) epoch: &'a str,
    pub(crate) recovered: bool,
    /// `history` holds every message the client is owed (else the rest follows as `message` events).
    pub(crate) history_complete: bool,
}

/// `{"type":"welcome","room_id","client_id","users","history","ttl_s","epoch","recovered"}`, plus
/// `"history_complete":false` when `history` was cut, with `history` made of already serialised
/// `message` events.
pub(crate) fn welcome<'h, U>(w: Welcome<'_, U>, history: impl Iterator<Item = &'h str>) -> String
where
    U: Iterator<Item = &'h str> + Clone,
{
    let head = WelcomeHead {
        kind: "welcome",
        room_id: w.room_id,
        client_id: w.client_id,
        users: SerializeIter(w.users),
        ttl_s: w.ttl_s,
        epoch: w.epoch,
        recovered: w.recovered,
        history_complete: w.history_complete,
    };
    with_raw_array(to_json(&head), "history", history)
}

/// `{"room_id","ttl_s","messages":[MESSAGE_EVENT...]}` (SPEC §3 `GET /rooms/{room}/messages`), with
/// `"more":true` when the page was cut.
pub(crate) fn room_messages<'h>(
    room_id: &str,
    ttl_s: u64,
    more: bool,
    events: impl Iterator<Item = &'h str>,
) -> String {
    with_raw_array(
        to_json(&RoomMessagesHead {
            room_id,
            ttl_s,
            more,
        }),
        "messages",
        events,
    )
}

#[derive(Serialize)]
#[serde(bound(serialize = "SerializeIter<I>: Serialize"))]
struct GlobalMessages<I> {
    messages: SerializeIter<I>,
    /// Written only when `true`: older messages were left out.
    #[serde(skip_serializing_if = "is_false")]
    more: bool,
}

/// An upper bound of what one entry of `GET /messages` adds besides its escaped text:
/// `{"message":`, `,"timestamp":` and the number (at most 24 characters), `}` and a comma.
pub(crate) const GLOBAL_ENTRY_OVERHEAD: usize = 64;

/// The length of `s` as a JSON string, quotes included, escaped as [`push_json_str`] and serde_json
/// do: what it will weigh in a view, known before writing it.
pub(crate) fn json_str_len(s: &str) -> usize {
    2 + s.len()
        + s.bytes()
            .filter(|&b| byte_needs_escape(b))
            .map(|b| match b {
                b'"' | b'\\' | 0x08 | b'\t' | b'\n' | 0x0c | b'\r' => 1,
                _ => 5,
            })
            .sum::<usize>()
}

#[derive(Serialize)]
struct GlobalMessage<'a> {
    message: &'a str,
    timestamp: f64,
}

/// `{"messages":[{"message":TEXT,"timestamp":UNIX_SECONDS_FLOAT}]}` (SPEC §3 `GET /messages`), with
/// `"more":true` when older messages were left out.
pub(crate) fn global_messages<'a>(
    messages: impl Iterator<Item = (&'a str, Micros)> + Clone,
    more: bool,
) -> String {
    to_json(&GlobalMessages {
        messages: SerializeIter(messages.map(|(message, at)| GlobalMessage {
            message,
            timestamp: unix_seconds(at),
        })),
        more,
    })
}

/// One row of `GET /rooms`.
#[derive(Serialize)]
pub(crate) struct RoomRow<'a> {
    pub(crate) room_id: &'a str,
    pub(crate) users: usize,
    pub(crate) messages: usize,
}

#[derive(Serialize)]
struct Rooms<'a> {
    rooms: &'a [RoomRow<'a>],
}

/// `{"rooms":[{"room_id","users","messages"}]}` (SPEC §3 `GET /rooms`), rows in the given order.
pub(crate) fn rooms(rows: &[RoomRow<'_>]) -> String {
    to_json(&Rooms { rooms: rows })
}

/// Serialises an iterator as a JSON array without collecting it first. Needs `Clone` because
/// `Serialize` takes `&self`.
struct SerializeIter<I>(I);

impl<I> Serialize for SerializeIter<I>
where
    I: Iterator + Clone,
    I::Item: Serialize,
{
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.clone())
    }
}

/// Appends `"key":[raw,raw,…]` to the serialised object `head`. Each `raw` must be a complete JSON
/// value; here they are always events this module serialised.
fn with_raw_array<'h>(head: String, key: &str, raw: impl Iterator<Item = &'h str>) -> String {
    let mut out = head;
    debug_assert!(
        out.ends_with('}') && out.len() > 2,
        "bug: head is not a non-empty object"
    );
    out.pop();
    out.push_str(",\"");
    out.push_str(key); // keys are ASCII identifiers from this module: nothing to escape
    out.push_str("\":[");
    for (i, value) in raw.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(value);
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const AT: Micros = 1_795_255_200_123_456; // 2026-11-21T10:00:00.123456Z

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
    }

    #[test]
    fn message_shape() {
        let v = parse(
            message(
                &mut FramePool::default(),
                7,
                "lobby",
                "alice",
                "hi \"there\" </script>\n",
                AT,
            )
            .text(),
        );
        assert_eq!(
            v,
            json!({
                "type": "message", "id": 7, "room_id": "lobby", "client_id": "alice",
                "content": "hi \"there\" </script>\n", "timestamp": "2026-11-21T10:00:00.123456Z",
            })
        );
    }

    #[test]
    fn presence_shapes() {
        for (kind, name) in [(Presence::Join, "join"), (Presence::Leave, "leave")] {
            let v = parse(presence(&mut FramePool::default(), kind, "r", "bob#2", AT).text());
            assert_eq!(
                v,
                json!({"type": name, "room_id": "r", "client_id": "bob#2",
                       "timestamp": "2026-11-21T10:00:00.123456Z"})
            );
        }
    }

    /// The hand-written room events, byte for byte, in both timestamp forms.
    #[test]
    fn room_event_bytes() {
        for (times, at) in [
            (TimeForm::Rfc3339, "2026-11-21T10:00:00.123456Z"),
            (TimeForm::Python, "2026-11-21T10:00:00.123456+00:00"),
        ] {
            let mut pool = FramePool::default();
            pool.times = times;
            let cases = [
                (
                    message(&mut pool, 7, "r\n", "a\"b", "hi\\", AT),
                    r#"{"type":"message","id":7,"room_id":"r\n","client_id":"a\"b","content":"hi\\""#,
                ),
                (
                    presence(&mut pool, Presence::Join, "r\n", "a\"b", AT),
                    r#"{"type":"join","room_id":"r\n","client_id":"a\"b""#,
                ),
                (
                    presence(&mut pool, Presence::Leave, "r", "b", AT),
                    r#"{"type":"leave","room_id":"r","client_id":"b""#,
                ),
                (
                    typing(&mut pool, "r\n", "a\"b", AT),
                    r#"{"type":"typing","room_id":"r\n","client_id":"a\"b""#,
                ),
                (
                    system(&mut pool, "r", "a\"b joined", AT),
                    r#"{"type":"system","room_id":"r","client_id":"system","content":"a\"b joined""#,
                ),
                (
                    presence_list(&mut pool, ["a", "b\n"].into_iter(), AT),
                    r#"{"type":"presence","users":["a","b\n"]"#,
                ),
                (
                    presence_list(&mut pool, std::iter::empty(), AT),
                    r#"{"type":"presence","users":[]"#,
                ),
            ];
            for (event, head) in cases {
                assert_eq!(event.text(), format!(r#"{head},"timestamp":"{at}"}}"#));
            }
        }
    }

    #[test]
    fn error_shapes() {
        let v = parse(&error(ErrorCode::RateLimited, "slow down"));
        assert_eq!(
            v,
            json!({"type": "error", "code": "rate_limited", "message": "slow down"})
        );
        let v = parse(&error(ErrorCode::BadRequest, "x"));
        assert_eq!(v["code"], "bad_request");
    }

    #[test]
    fn welcome_shape_with_spliced_history() {
        let mut buf = FramePool::default();
        let m1 = message(&mut buf, 1, "r", "a", "one", AT);
        let m2 = message(&mut buf, 2, "r", "b", "two", AT);
        let users = ["a", "b\"q"];
        let w = Welcome {
            room_id: "r",
            client_id: "b\"q",
            users: users.iter().copied(),
            ttl_s: 60,
            epoch: "e1",
            recovered: false,
            history_complete: true,
        };
        let v = parse(&welcome(w, [m1.text(), m2.text()].into_iter()));
        assert_eq!(
            v,
            json!({
                "type": "welcome", "room_id": "r", "client_id": "b\"q", "users": ["a", "b\"q"],
                "history": [parse(m1.text()), parse(m2.text())], "ttl_s": 60, "epoch": "e1", "recovered": false,
            })
        );
        let empty = Welcome {
            users: std::iter::empty(),
            ..w_default()
        };
        let v = parse(&welcome(empty, std::iter::empty()));
        assert_eq!(v["history"], json!([]));
        assert_eq!(v["users"], json!([]));
        let cut = Welcome {
            history_complete: false,
            ..w_default()
        };
        let v = parse(&welcome(cut, [m1.text()].into_iter()));
        assert_eq!(v["history_complete"], false);
        assert_eq!(v["history"], json!([parse(m1.text())]));
    }

    fn w_default() -> Welcome<'static, std::iter::Empty<&'static str>> {
        Welcome {
            room_id: "r",
            client_id: "c",
            users: std::iter::empty(),
            ttl_s: 1,
            epoch: "e",
            recovered: true,
            history_complete: true,
        }
    }

    #[test]
    fn http_view_shapes() {
        let m1 = message(&mut FramePool::default(), 1, "r", "a", "one", AT);
        let v = parse(&room_messages("r/x", 60, false, [m1.text()].into_iter()));
        assert_eq!(
            v,
            json!({"room_id": "r/x", "ttl_s": 60, "messages": [parse(m1.text())]})
        );
        let v = parse(&room_messages("r", 60, true, [m1.text()].into_iter()));
        assert_eq!(v["more"], true);

        let v = parse(&global_messages(
            [("hello", AT), ("<b>", 1_500_000)].into_iter(),
            false,
        ));
        assert_eq!(
            v,
            json!({"messages": [
                {"message": "hello", "timestamp": 1_795_255_200.123_456},
                {"message": "<b>", "timestamp": 1.5},
            ]})
        );
        let v = parse(&global_messages([("x", AT)].into_iter(), true));
        assert_eq!(v["more"], true);

        let rows = [RoomRow {
            room_id: "a",
            users: 2,
            messages: 3,
        }];
        let v = parse(&rooms(&rows));
        assert_eq!(
            v,
            json!({"rooms": [{"room_id": "a", "users": 2, "messages": 3}]})
        );
        assert_eq!(parse(&rooms(&[])), json!({"rooms": []}));
    }

    /// serde_json's output for the same event: the reference the hand-written encoder must match
    /// byte for byte.
    #[derive(Serialize)]
    struct SerdeMessage<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        id: u64,
        room_id: &'a str,
        client_id: &'a str,
        content: &'a str,
        timestamp: String,
    }

    fn serde_message(id: u64, room_id: &str, client_id: &str, content: &str, at: Micros) -> String {
        serde_json::to_string(&SerdeMessage {
            kind: "message",
            id,
            room_id,
            client_id,
            content,
            timestamp: crate::chat::rfc3339_micros(at),
        })
        .unwrap()
    }

    #[test]
    fn escaping_matches_serde_json_on_every_special_character() {
        let mut buf = FramePool::default();
        let all_controls: String = (0u8..0x20).map(char::from).collect();
        for content in [
            "",
            "plain",
            "\"quoted\" and \\back\\slash\\",
            &all_controls,
            "\u{7f} del, \u{2028} line separator, é, 🎉, </script>",
            "\\",
            "\"",
        ] {
            let ours = message(&mut buf, u64::MAX, "r\n", "a\"b", content, AT);
            assert_eq!(
                ours.text(),
                serde_message(u64::MAX, "r\n", "a\"b", content, AT),
                "content {content:?}"
            );
        }
    }

    #[test]
    fn json_str_len_is_what_serde_json_writes() {
        let all_controls: String = (0u8..0x20).map(char::from).collect();
        for s in [
            "",
            "plain",
            "\"q\" \\ é 🎉",
            &all_controls,
            "\u{7f}\u{2028}",
        ] {
            assert_eq!(
                json_str_len(s),
                serde_json::to_string(s).unwrap().len(),
                "{s:?}"
            );
        }
        let entry = serde_json::to_string(&GlobalMessage {
            message: "",
            timestamp: unix_seconds(LAST_TIME),
        })
        .unwrap();
        // All but the quoted text, plus the comma between entries.
        let besides_text = entry.len() - "\"\"".len() + ",".len();
        assert!(besides_text <= GLOBAL_ENTRY_OVERHEAD, "{entry}");
    }

    #[test]
    fn event_frames_are_single_unmasked_text_frames() {
        let mut buf = FramePool::default();
        for len in [0, 50, 125, 126, 200, 65_535, 65_536, 70_000] {
            let content = "x".repeat(len);
            let ev = message(&mut buf, 1, "r", "a", &content, AT);
            let frame = ev.frame();
            assert_eq!(frame[0], 0x81, "FIN + text");
            assert_eq!(frame[1] & 0x80, 0, "server frames are unmasked");
            assert_eq!(ev.text(), serde_message(1, "r", "a", &content, AT));
            assert_eq!(ev.text_len(), ev.text().len());
            assert!(ev.buffer_len() >= frame.len());
        }
        assert_eq!(buf.raw("hé").frame(), b"\x81\x03h\xc3\xa9");
    }

    proptest::proptest! {
        #[test]
        fn encoder_matches_serde_json(
            id: u64,
            room in "\\PC{0,20}",
            client in "(\\PC|[\\x00-\\x1f\"\\\\]){0,20}",
            content in "(\\PC|[\\x00-\\x1f\"\\\\]){0,300}",
            at in 0u64..LAST_TIME,
        ) {
            let mut buf = FramePool::default();
            let ours = message(&mut buf, id, &room, &client, &content, at);
            proptest::prop_assert_eq!(ours.text(), serde_message(id, &room, &client, &content, at));
            let join = presence(&mut buf, Presence::Join, &room, &client, at);
            let v = parse(join.text());
            proptest::prop_assert_eq!(&v["room_id"], &json!(room));
            proptest::prop_assert_eq!(&v["client_id"], &json!(client));
        }
    }

    /// 9999-12-31T23:59:59.999999Z, the last time with a four-digit year.
    const LAST_TIME: Micros = 253_402_300_799_999_999;

    #[test]
    fn word_scan_agrees_with_the_byte_test_at_every_position() {
        for b in 0..=255u8 {
            for pos in 0..8 {
                let mut word = [b'a'; 8];
                word[pos] = b;
                assert_eq!(
                    word_needs_escape(u64::from_le_bytes(word)),
                    byte_needs_escape(b),
                    "byte {b:#04x} at {pos}"
                );
            }
        }
        // A high byte (UTF-8) next to a control must not hide it, nor make one up.
        assert!(word_needs_escape(u64::from_le_bytes(*b"\xff\x00\xffaaaaa")));
        assert!(!word_needs_escape(u64::from_le_bytes(
            *b"\xc3\xa9\xf0\x9f\x8e\x89 !"
        )));
    }
}
