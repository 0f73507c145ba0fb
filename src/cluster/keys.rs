//! The Redis key and channel layout, in one place: the names below, and the payloads each channel
//! carries. The Lua scripts in `scripts/` spell the same key names out; a change to the layout is a
//! change to them too. What is kept under each key, and when, is theirs.
//!
//! # Keys (room names are cleaned: no control characters, no `/`)
//!
//! `{room}` and `{node}` stand for the name itself: placeholders, not Redis Cluster hash tags.
//!
//! | key | type | what |
//! |---|---|---|
//! | `wisp:meta:{room}` | hash | `epoch`, `seq` (last id), `at` (last timestamp µs); lives while the room has members or history |
//! | `wisp:hist:{room}` | zset | message bodies `id\nat\nclient\ncontent`, score = timestamp µs; trimmed by TTL and `--history-max` |
//! | `wisp:members:{room}` | hash | `node:conn` → name |
//! | `wisp:names:{room}` | hash | name → `node:conn`, for de-duplication |
//! | `wisp:rooms` | set | room names, for the image |
//! | `wisp:node:{node}` | string | liveness, expires `NODE_TTL` after the last heartbeat |
//! | `wisp:nodes`, `wisp:noderooms:{node}` | sets | nodes, and the rooms each has members in, for sweeping |
//! | `wisp:global:hist`, `wisp:global:seq`, `wisp:global:at` | zset, counters | the global channel |
//!
//! Channels: `wisp:room:{room}` carries `m\nepoch\nid\nat\nclient\ncontent` and
//! `j|l|J|L\nepoch\nat\nnode:conn\nname` (upper case: a re-registration, which the node that made it
//! ignores); `wisp:global` carries `seq\nat\ntext`; `wisp:hb` a heartbeat that keeps idle feeds talking.

/// The pattern of every room's channel, for `PSUBSCRIBE`.
pub(super) const ROOM_CHANNELS: &str = "wisp:room:*";
/// A room's channel is this followed by the room's name.
pub(super) const ROOM_CHANNEL_PREFIX: &str = "wisp:room:";
/// The global channel.
pub(super) const GLOBAL_CHANNEL: &str = "wisp:global";
/// The heartbeats every node publishes each second.
pub(super) const HEARTBEAT_CHANNEL: &str = "wisp:hb";

/// A member's field in `wisp:members:{room}` and `wisp:names:{room}`: `node:conn`.
pub(super) fn member_field(node: &str, conn: u64) -> String {
    format!("{node}:{conn}")
}

/// What every field of `node`'s members starts with.
pub(super) fn node_prefix(node: &str) -> String {
    format!("{node}:")
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
        assert!(field.starts_with(&node_prefix("00ff")));
        assert_eq!(split_member_field(&field), Some(("00ff", 42)));
        assert_eq!(split_member_field("00ff"), None);
        assert_eq!(split_member_field("00ff:x"), None);
    }
}
