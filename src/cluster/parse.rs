//! What Redis sends, read back: a published event on the feed into a [`Notice`], the image
//! scripts' replies into a [`RoomImage`] and the global history, and the small readers of script replies the command
//! thread uses too. Formats are those of `keys`; nothing here talks to Redis.

use redis::Value;

use super::keys::{self, GLOBAL_CHANNEL};
use super::Notice;
use crate::chat::{ClusterMessage, Micros, Origin, Presence, RoomImage};

pub(super) fn text(v: &Value) -> Option<String> {
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

/// `id\nat\nclient\ncontent` (a history entry).
fn parse_message(body: &str) -> Option<ClusterMessage> {
    let mut parts = body.splitn(4, '\n');
    Some(ClusterMessage {
        id: parts.next()?.parse().ok()?,
        at: parts.next()?.parse().ok()?,
        client: parts.next()?.to_owned(),
        content: parts.next()?.to_owned(),
    })
}

/// `N\n` then N × `id\nat\nCLIENT_LEN\nCONTENT_LEN\n` + client + content (a published batch).
fn parse_batch(mut rest: &str) -> Option<Vec<ClusterMessage>> {
    fn line<'a>(rest: &mut &'a str) -> Option<&'a str> {
        let (head, tail) = rest.split_once('\n')?;
        *rest = tail;
        Some(head)
    }
    let n: usize = line(&mut rest)?.parse().ok()?;
    let mut out = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let id = line(&mut rest)?.parse().ok()?;
        let at = line(&mut rest)?.parse().ok()?;
        let client_len: usize = line(&mut rest)?.parse().ok()?;
        let content_len: usize = line(&mut rest)?.parse().ok()?;
        let client = rest.get(..client_len)?.to_owned();
        let content = rest.get(client_len..client_len.checked_add(content_len)?)?;
        rest = &rest[client_len + content_len..];
        out.push(ClusterMessage {
            id,
            at,
            client,
            content: content.to_owned(),
        });
    }
    rest.is_empty().then_some(out)
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

/// A room's image (`image.lua`, or the end of `join.lua`'s answer): `{epoch, seq, {body...},
/// {field, name, ...}, gap}`; members of node `me` are left out of `remote`.
pub(super) fn parse_room_image(room: &str, v: &Value, me: &str) -> Option<RoomImage> {
    let f = items(v);
    if f.len() < 4 {
        return None;
    }
    let epoch = text(&f[0])?;
    let seq = text(&f[1]).and_then(|s| s.parse().ok()).unwrap_or(0);
    let messages = items(&f[2])
        .iter()
        .filter_map(|b| parse_message(&text(b)?))
        .collect();
    let members = strings(&f[3]).unwrap_or_default();
    let remote = members
        .chunks_exact(2)
        .filter(|p| keys::split_member_field(&p[0]).is_none_or(|(node, _)| node != me))
        .map(|p| p[1].clone())
        .collect();
    let gap = f
        .get(4)
        .and_then(text)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Some(RoomImage {
        room: room.to_owned(),
        epoch,
        seq,
        messages,
        remote,
        gap,
    })
}

/// The global channel's image (`global_image.lua`): its messages (timestamp, text) and last seq.
pub(super) fn parse_global_image(v: &Value) -> (Vec<(Micros, String)>, u64) {
    let top = items(v);
    let global = top.first().map_or_else(Vec::new, |g| {
        items(g)
            .iter()
            .filter_map(|b| parse_global(&text(b)?).map(|(_, at, t)| (at, t)))
            .collect()
    });
    let seq = top
        .get(1)
        .and_then(text)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (global, seq)
}

/// One published event → a notice; `None` for anything malformed.
pub(super) fn parse_event(channel: &str, payload: &[u8], me: &str) -> Option<Notice> {
    let payload = std::str::from_utf8(payload).ok()?;
    if channel == GLOBAL_CHANNEL {
        let (seq, at, text) = parse_global(payload)?;
        return Some(Notice::Global { seq, at, text });
    }
    let room = keys::room_of_channel(channel)?;
    let (kind, rest) = payload.split_once('\n')?;
    let (epoch, rest) = rest.split_once('\n')?;
    let epoch = epoch.to_owned();
    if kind == "m" {
        let msgs = parse_batch(rest)?;
        return Some(Notice::Messages { room, epoch, msgs });
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

    fn batch(msgs: &[(u64, u64, &str, &str)]) -> String {
        let mut s = format!("{}\n", msgs.len());
        for (id, at, client, content) in msgs {
            s += &format!(
                "{id}\n{at}\n{}\n{}\n{client}{content}",
                client.len(),
                content.len()
            );
        }
        s
    }

    #[test]
    fn parses_room_events() {
        let ch = keys::channel_of("a b");
        let payload = format!(
            "m\nE1\n{}",
            batch(&[
                (7, 1_700_000_000_000_001, "bob", "hi\nthere"),
                (8, 9, "é", "")
            ])
        );
        match parse_event(&ch, payload.as_bytes(), "me") {
            Some(Notice::Messages { room, epoch, msgs }) => {
                assert_eq!((room.as_str(), epoch.as_str()), ("a b", "E1"));
                assert_eq!(
                    msgs,
                    [
                        ClusterMessage {
                            id: 7,
                            at: 1_700_000_000_000_001,
                            client: "bob".into(),
                            content: "hi\nthere".into()
                        },
                        ClusterMessage {
                            id: 8,
                            at: 9,
                            client: "é".into(),
                            content: String::new()
                        }
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        let r = keys::channel_of("r");
        match parse_event(&r, b"L\nE\n5\nme:3\nalice#2", "me") {
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
            parse_event(&r, b"j\nE\n5\nother:9\nbob", "me"),
            Some(Notice::Presence {
                kind: Presence::Join,
                origin: Origin::Elsewhere,
                resync: false,
                ..
            })
        ));
        assert!(parse_event("wisp:other", b"x", "me").is_none());
        assert!(parse_event(&r, b"m\nE\nnot-a-number", "me").is_none());
        // A batch that says more or less than it carries is refused whole.
        for bad in [
            "m\nE\n2\n1\n1\n1\n1\nab",
            "m\nE\n1\n1\n1\n1\n5\nab",
            "m\nE\n1\n1\n1\n1\n1\nabc",
        ] {
            assert!(parse_event(&r, bad.as_bytes(), "me").is_none(), "{bad:?}");
        }
        match parse_event(GLOBAL_CHANNEL, b"3\n9\n{\"a\":1}", "me") {
            Some(Notice::Global {
                seq: 3,
                at: 9,
                text,
            }) => assert_eq!(text, "{\"a\":1}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_images() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let v = Value::Array(vec![
            b("E"),
            b("2"),
            Value::Array(vec![b("1\n10\nann\nx"), b("2\n11\nbob\ny")]),
            Value::Array(vec![b("me:1"), b("ann"), b("n2:4"), b("bob")]),
        ]);
        let r = parse_room_image("r", &v, "me").unwrap();
        assert_eq!((r.room.as_str(), r.epoch.as_str(), r.seq), ("r", "E", 2));
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.remote, ["bob"]);
        let g = Value::Array(vec![Value::Array(vec![b("4\n12\nhello")]), b("4")]);
        assert_eq!(parse_global_image(&g), (vec![(12, "hello".to_string())], 4));
    }

    proptest::proptest! {
        /// Whatever arrives on a room's channel is a notice or nothing, never a panic.
        #[test]
        fn any_payload_parses_or_is_refused(
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            room in "[a-z{}%]{0,8}",
        ) {
            let _ = parse_event(&keys::channel_of(&room), &payload, "me");
            let _ = parse_event(GLOBAL_CHANNEL, &payload, "me");
        }

        /// A batch as post.lua writes it reads back message by message, whatever the text.
        #[test]
        fn batches_read_back(
            msgs in proptest::collection::vec((1u64..1_000_000, 0u64..1 << 53, "\\PC{0,12}", "(\\PC|\n){0,40}"), 1..6),
        ) {
            let refs: Vec<(u64, u64, &str, &str)> =
                msgs.iter().map(|(i, a, c, t)| (*i, *a, c.as_str(), t.as_str())).collect();
            let payload = format!("m\nE\n{}", batch(&refs));
            match parse_event(&keys::channel_of("r"), payload.as_bytes(), "me") {
                Some(Notice::Messages { msgs: got, .. }) => {
                    let got: Vec<(u64, u64, String, String)> =
                        got.into_iter().map(|m| (m.id, m.at, m.client, m.content)).collect();
                    proptest::prop_assert_eq!(got, msgs);
                }
                other => proptest::prop_assert!(false, "{:?}", other),
            }
        }
    }
}
