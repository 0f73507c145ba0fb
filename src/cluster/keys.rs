//! The Redis key and channel layout, in one place: the names below, and the payloads each channel
//! carries. What is kept under each key, and when, is the scripts' (`scripts/*.lua`), which get
//! every key they touch from here, as `KEYS`, never build one themselves: in a Redis Cluster a
//! script may only touch the keys it declared, all in one slot.
//!
//! # Keys
//!
//! Every key of a room, and its channel, carries the room's hash tag `{r:NAME}` (NAME with `%`,
//! `{` and `}` percent-encoded, so that a name can never end the tag early or empty it): a room
//! lives on one slot, and so on one shard of a Redis Cluster, with its channel.
//!
//! | key | type | what |
//! |---|---|---|
//! | `wisp:{r:NAME}:meta` | hash | `epoch`, `seq` (last id), `at` (last timestamp µs); lives while the room has members or history |
//! | `wisp:{r:NAME}:log` | list | message bodies `id\nat\nclient\ncontent`, oldest first; trimmed by TTL and `--history-max` |
//! | `wisp:{r:NAME}:members` | hash | `node:conn` → name |
//! | `wisp:{r:NAME}:names` | hash | name → `node:conn`, for de-duplication |
//! | `wisp:{g}:log`, `wisp:{g}:seq`, `wisp:{g}:at` | list, counters | the global channel (`/ws`) |
//! | `wisp:{n}:nodes` | zset | node id → its last heartbeat (ms, Redis's clock): liveness |
//!
//! # Channels (sharded pub/sub: `SPUBLISH`/`SSUBSCRIBE`)
//!
//! - `wisp:{r:NAME}:ch`, a room's events: a batch of messages
//!   `m\nepoch\nN\n` then N × `id\nat\nCLIENT_LEN\nCONTENT_LEN\n` + client + content, or a
//!   presence change `j|l|J|L\nepoch\nat\nnode:conn\nname` (upper case: a re-registration, which
//!   the node that made it ignores). A node subscribes to a room's channel only while it has
//!   members in the room.
//! - `wisp:{g}:ch`, the global channel: `seq\nat\ntext`; every node subscribes.

/// The room's hash tag, `{r:NAME}` with `%`, `{`, `}` percent-encoded: it hashes to the slot of
/// every key of the room, so it is what routing needs (one string, not [`RoomKeys`]' five).
pub(super) fn room_tag(room: &str) -> String {
    let mut tag = String::with_capacity(room.len() + 4);
    tag.push_str("{r:");
    for c in room.chars() {
        match c {
            '%' => tag.push_str("%25"),
            '{' => tag.push_str("%7B"),
            '}' => tag.push_str("%7D"),
            c => tag.push(c),
        }
    }
    tag.push('}');
    tag
}

/// A room's keys and channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RoomKeys {
    pub(super) meta: String,
    pub(super) log: String,
    pub(super) members: String,
    pub(super) names: String,
    pub(super) channel: String,
}

impl RoomKeys {
    pub(super) fn of(room: &str) -> RoomKeys {
        let tag = room_tag(room);
        RoomKeys {
            meta: format!("wisp:{tag}:meta"),
            log: format!("wisp:{tag}:log"),
            members: format!("wisp:{tag}:members"),
            names: format!("wisp:{tag}:names"),
            channel: channel_of(room),
        }
    }

    /// The four keys, in the order every room script declares them: meta, log, members, names.
    pub(super) fn all(&self) -> [&str; 4] {
        [&self.meta, &self.log, &self.members, &self.names]
    }
}

/// A room's channel.
pub(super) fn channel_of(room: &str) -> String {
    format!("wisp:{}:ch", room_tag(room))
}

/// The room whose channel `channel` is; `None` for any other channel.
pub(super) fn room_of_channel(channel: &str) -> Option<String> {
    let tag = channel.strip_prefix("wisp:{r:")?.strip_suffix("}:ch")?;
    let mut room = String::with_capacity(tag.len());
    let mut rest = tag;
    while let Some(i) = rest.find('%') {
        room.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        room.push(match code {
            "25" => '%',
            "7B" => '{',
            "7D" => '}',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    room.push_str(rest);
    Some(room)
}

/// The global channel's keys, in the order its scripts declare them: log, seq, at.
pub(super) const GLOBAL_KEYS: [&str; 3] = ["wisp:{g}:log", "wisp:{g}:seq", "wisp:{g}:at"];
/// The global channel.
pub(super) const GLOBAL_CHANNEL: &str = "wisp:{g}:ch";
/// The node registry.
pub(super) const NODES: &str = "wisp:{n}:nodes";

/// A member's field in a room's `members` and `names`: `node:conn`.
pub(super) fn member_field(node: &str, conn: u64) -> String {
    format!("{node}:{conn}")
}

/// A field's node and conn; `None` if it is malformed.
pub(super) fn split_member_field(field: &str) -> Option<(&str, u64)> {
    let (node, conn) = field.split_once(':')?;
    Some((node, conn.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_fields_read_back() {
        let field = member_field("00ff", 42);
        assert_eq!(split_member_field(&field), Some(("00ff", 42)));
        assert_eq!(split_member_field("00ff"), None);
        assert_eq!(split_member_field("00ff:x"), None);
    }

    #[test]
    fn a_room_is_one_tag_whatever_its_name() {
        for room in ["general", "a}b", "}", "{", "{x}", "50%", "%7B", "é ü", ""] {
            let k = RoomKeys::of(room);
            // Redis hashes what lies between the first `{` and the first `}` after it: the same,
            // non-empty, text for every key of the room.
            let tag = |key: &str| {
                let open = key.find('{').unwrap();
                let close = open + key[open..].find('}').unwrap();
                key[open + 1..close].to_owned()
            };
            let t = tag(&k.meta);
            assert!(!t.is_empty());
            for key in [&k.log, &k.members, &k.names, &k.channel, &room_tag(room)] {
                assert_eq!(tag(key), t, "{room:?}");
            }
            assert_eq!(room_of_channel(&k.channel).as_deref(), Some(room));
        }
        assert_ne!(RoomKeys::of("a}b").meta, RoomKeys::of("a").meta);
        assert_eq!(room_of_channel(GLOBAL_CHANNEL), None);
        assert_eq!(room_of_channel("wisp:{r:%zz}:ch"), None);
    }
}
