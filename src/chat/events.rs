//! The JSON text the chat sends: room events (SPEC §4.2) and the chat's HTTP views (SPEC §3).
//!
//! Owns the exact shapes. Everything goes through serde_json so that any user text is escaped
//! correctly; the only hand-written JSON is the splicing of already serialised `message` events into
//! `welcome` and `GET /rooms/{room}/messages`, which avoids serialising a history twice. Framing and
//! sending the text is the reactor's job.

use serde::Serialize;

use super::time::{unix_seconds, Rfc3339};
use super::Micros;

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
struct MessageEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: u64,
    room_id: &'a str,
    client_id: &'a str,
    content: &'a str,
    timestamp: Rfc3339,
}

#[derive(Serialize)]
struct PresenceEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room_id: &'a str,
    client_id: &'a str,
    timestamp: Rfc3339,
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
}

/// `GET /rooms/{room}/messages` without `messages`, which is spliced in by [`with_raw_array`].
#[derive(Serialize)]
struct RoomMessagesHead<'a> {
    room_id: &'a str,
    ttl_s: u64,
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Serialising plain structs of strings and numbers into a String cannot fail.
    serde_json::to_string(value).expect("bug: chat event failed to serialise")
}

/// `{"type":"message","id","room_id","client_id","content","timestamp"}`.
pub(crate) fn message(
    id: u64,
    room_id: &str,
    client_id: &str,
    content: &str,
    at: Micros,
) -> String {
    to_json(&MessageEvent {
        kind: "message",
        id,
        room_id,
        client_id,
        content,
        timestamp: Rfc3339(at),
    })
}

/// `{"type":"join"|"leave","room_id","client_id","timestamp"}`.
pub(crate) fn presence(kind: Presence, room_id: &str, client_id: &str, at: Micros) -> String {
    to_json(&PresenceEvent {
        kind: match kind {
            Presence::Join => "join",
            Presence::Leave => "leave",
        },
        room_id,
        client_id,
        timestamp: Rfc3339(at),
    })
}

/// `{"type":"error","code","message"}`.
pub(crate) fn error(code: ErrorCode, message: &str) -> String {
    to_json(&ErrorEvent {
        kind: "error",
        code: code.as_str(),
        message,
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
}

/// `{"type":"welcome","room_id","client_id","users","history","ttl_s","epoch","recovered"}` with
/// `history` made of already serialised `message` events.
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
    };
    with_raw_array(to_json(&head), "history", history)
}

/// `{"room_id","ttl_s","messages":[MESSAGE_EVENT...]}` (SPEC §3 `GET /rooms/{room}/messages`).
pub(crate) fn room_messages<'h>(
    room_id: &str,
    ttl_s: u64,
    events: impl Iterator<Item = &'h str>,
) -> String {
    with_raw_array(
        to_json(&RoomMessagesHead { room_id, ttl_s }),
        "messages",
        events,
    )
}

#[derive(Serialize)]
#[serde(bound(serialize = "SerializeIter<I>: Serialize"))]
struct GlobalMessages<I> {
    messages: SerializeIter<I>,
}

#[derive(Serialize)]
struct GlobalMessage<'a> {
    message: &'a str,
    timestamp: f64,
}

/// `{"messages":[{"message":TEXT,"timestamp":UNIX_SECONDS_FLOAT}]}` (SPEC §3 `GET /messages`).
pub(crate) fn global_messages<'a>(
    messages: impl Iterator<Item = (&'a str, Micros)> + Clone,
) -> String {
    to_json(&GlobalMessages {
        messages: SerializeIter(messages.map(|(message, at)| GlobalMessage {
            message,
            timestamp: unix_seconds(at),
        })),
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
        let v = parse(&message(
            7,
            "lobby",
            "alice",
            "hi \"there\" </script>\n",
            AT,
        ));
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
            let v = parse(&presence(kind, "r", "bob#2", AT));
            assert_eq!(
                v,
                json!({"type": name, "room_id": "r", "client_id": "bob#2",
                       "timestamp": "2026-11-21T10:00:00.123456Z"})
            );
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
        let m1 = message(1, "r", "a", "one", AT);
        let m2 = message(2, "r", "b", "two", AT);
        let users = ["a", "b\"q"];
        let w = Welcome {
            room_id: "r",
            client_id: "b\"q",
            users: users.iter().copied(),
            ttl_s: 60,
            epoch: "e1",
            recovered: false,
        };
        let v = parse(&welcome(w, [m1.as_str(), m2.as_str()].into_iter()));
        assert_eq!(
            v,
            json!({
                "type": "welcome", "room_id": "r", "client_id": "b\"q", "users": ["a", "b\"q"],
                "history": [parse(&m1), parse(&m2)], "ttl_s": 60, "epoch": "e1", "recovered": false,
            })
        );
        let empty = Welcome {
            users: std::iter::empty(),
            ..w_default()
        };
        let v = parse(&welcome(empty, std::iter::empty()));
        assert_eq!(v["history"], json!([]));
        assert_eq!(v["users"], json!([]));
    }

    fn w_default() -> Welcome<'static, std::iter::Empty<&'static str>> {
        Welcome {
            room_id: "r",
            client_id: "c",
            users: std::iter::empty(),
            ttl_s: 1,
            epoch: "e",
            recovered: true,
        }
    }

    #[test]
    fn http_view_shapes() {
        let m1 = message(1, "r", "a", "one", AT);
        let v = parse(&room_messages("r/x", 60, [m1.as_str()].into_iter()));
        assert_eq!(
            v,
            json!({"room_id": "r/x", "ttl_s": 60, "messages": [parse(&m1)]})
        );

        let v = parse(&global_messages(
            [("hello", AT), ("<b>", 1_500_000)].into_iter(),
        ));
        assert_eq!(
            v,
            json!({"messages": [
                {"message": "hello", "timestamp": 1_795_255_200.123_456},
                {"message": "<b>", "timestamp": 1.5},
            ]})
        );

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
}
