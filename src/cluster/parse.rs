//! What Redis sends, read back: a published event on the feed into a [`Notice`], the image
//! script's reply into a [`ClusterImage`], and the small readers of script replies the command
//! thread uses too. Formats are those of `keys`; nothing here talks to Redis.

use redis::Value;

use super::keys::{self, GLOBAL_CHANNEL, ROOM_CHANNEL_PREFIX};
use super::Notice;
use crate::chat::{ClusterImage, ClusterMessage, Micros, Origin, Presence, RoomImage};

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(super) fn strings(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Array(items) => items.iter().map(text).collect(),
        _ => None,
    }
}

fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) => items,
        _ => &[],
    }
}

/// `id\nat\nclient\ncontent`.
fn parse_message(body: &str) -> Option<ClusterMessage> {
    let mut parts = body.splitn(4, '\n');
    Some(ClusterMessage {
        id: parts.next()?.parse().ok()?,
        at: parts.next()?.parse().ok()?,
        client: parts.next()?.to_owned(),
        content: parts.next()?.to_owned(),
    })
}

/// `seq\nat\ntext`.
fn parse_global(body: &str) -> Option<(u64, Micros, String)> {
    let mut parts = body.splitn(3, '\n');
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.to_owned(),
    ))
}

pub(super) fn parse_image(v: &Value, me: &str) -> ClusterImage {
    let top = items(v);
    let mut image = ClusterImage::default();
    if let Some(rooms) = top.first() {
        for r in items(rooms) {
            let f = items(r);
            if f.len() < 5 {
                continue;
            }
            let (Some(room), Some(epoch)) = (text(&f[0]), text(&f[1])) else {
                continue;
            };
            let seq = text(&f[2]).and_then(|s| s.parse().ok()).unwrap_or(0);
            let messages = items(&f[3])
                .iter()
                .filter_map(|b| parse_message(&text(b)?))
                .collect();
            let members = strings(&f[4]).unwrap_or_default();
            let remote = members
                .chunks_exact(2)
                .filter(|p| !p[0].starts_with(&keys::node_prefix(me)))
                .map(|p| p[1].clone())
                .collect();
            image.rooms.push(RoomImage {
                room,
                epoch,
                seq,
                messages,
                remote,
            });
        }
    }
    if let Some(global) = top.get(1) {
        image.global = items(global)
            .iter()
            .filter_map(|b| parse_global(&text(b)?).map(|(_, at, t)| (at, t)))
            .collect();
    }
    image.global_seq = top
        .get(2)
        .and_then(text)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    image
}

/// One published event → a notice; `None` for heartbeats and anything malformed.
pub(super) fn parse_event(channel: &str, payload: &[u8], me: &str) -> Option<Notice> {
    let payload = std::str::from_utf8(payload).ok()?;
    if channel == GLOBAL_CHANNEL {
        let (seq, at, text) = parse_global(payload)?;
        return Some(Notice::Global { seq, at, text });
    }
    let room = channel.strip_prefix(ROOM_CHANNEL_PREFIX)?.to_owned();
    let (kind, rest) = payload.split_once('\n')?;
    let (epoch, rest) = rest.split_once('\n')?;
    let epoch = epoch.to_owned();
    if kind == "m" {
        let msg = parse_message(rest)?;
        return Some(Notice::Message { room, epoch, msg });
    }
    let (kind, resync) = match kind {
        "j" => (Presence::Join, false),
        "l" => (Presence::Leave, false),
        "J" => (Presence::Join, true),
        "L" => (Presence::Leave, true),
        _ => return None,
    };
    let mut parts = rest.splitn(3, '\n');
    let at = parts.next()?.parse().ok()?;
    let (node, conn) = keys::split_member_field(parts.next()?)?;
    let name = parts.next()?.to_owned();
    let origin = if node == me {
        Origin::Here
    } else {
        Origin::Elsewhere
    };
    Some(Notice::Presence {
        room,
        epoch,
        kind,
        name,
        at,
        origin,
        resync,
        conn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_room_events() {
        let n = parse_event(
            "wisp:room:a b",
            b"m\nE1\n7\n1700000000000001\nbob\nhi\nthere",
            "me",
        );
        match n {
            Some(Notice::Message { room, epoch, msg }) => {
                assert_eq!((room.as_str(), epoch.as_str()), ("a b", "E1"));
                assert_eq!(
                    msg,
                    ClusterMessage {
                        id: 7,
                        at: 1_700_000_000_000_001,
                        client: "bob".into(),
                        content: "hi\nthere".into()
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        match parse_event("wisp:room:r", b"L\nE\n5\nme:3\nalice#2", "me") {
            Some(Notice::Presence {
                kind: Presence::Leave,
                name,
                origin: Origin::Here,
                resync: true,
                at: 5,
                conn: 3,
                ..
            }) => assert_eq!(name, "alice#2"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_event("wisp:room:r", b"j\nE\n5\nother:9\nbob", "me"),
            Some(Notice::Presence {
                kind: Presence::Join,
                origin: Origin::Elsewhere,
                resync: false,
                ..
            })
        ));
        assert!(parse_event("wisp:hb", b"x", "me").is_none());
        assert!(parse_event("wisp:room:r", b"m\nE\nnot-a-number", "me").is_none());
        match parse_event("wisp:global", b"3\n9\n{\"a\":1}", "me") {
            Some(Notice::Global {
                seq: 3,
                at: 9,
                text,
            }) => assert_eq!(text, "{\"a\":1}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_an_image() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let v = Value::Array(vec![
            Value::Array(vec![Value::Array(vec![
                b("r"),
                b("E"),
                b("2"),
                Value::Array(vec![b("1\n10\nann\nx"), b("2\n11\nbob\ny")]),
                Value::Array(vec![b("me:1"), b("ann"), b("n2:4"), b("bob")]),
            ])]),
            Value::Array(vec![b("4\n12\nhello")]),
            b("4"),
        ]);
        let image = parse_image(&v, "me");
        assert_eq!(image.rooms.len(), 1);
        let r = &image.rooms[0];
        assert_eq!((r.room.as_str(), r.epoch.as_str(), r.seq), ("r", "E", 2));
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.remote, ["bob"]);
        assert_eq!(image.global, [(12, "hello".to_string())]);
        assert_eq!(image.global_seq, 4);
    }
}
