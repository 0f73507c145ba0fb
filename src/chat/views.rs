//! The chat's HTTP views (SPEC §3): `GET /messages`, `GET /rooms`, `GET /rooms/{room}/messages`,
//! each paged so that one request costs at most [`HISTORY_PAGE_BYTES`] of answer. Each hides what
//! has expired at `now` even if no timer has run yet.

use super::events::{self, RoomRow};
use super::{names, Chat, Micros, HISTORY_PAGE_BYTES, HISTORY_PAGE_MESSAGES, PAGE_HEAD_BYTES};

impl Chat {
    /// `GET /messages[?limit=N]`: `{"messages":[{"message":TEXT,"timestamp":UNIX_SECONDS_FLOAT}]}`, the
    /// global channel's unexpired messages, oldest first.
    ///
    /// At most `limit` messages (default and maximum [`HISTORY_PAGE_MESSAGES`], at least 1) and
    /// [`HISTORY_PAGE_BYTES`] (but always one message if there is one): the newest that fit, so the
    /// answer shows what is being said now. When older ones were left out it carries `"more":true`;
    /// the global channel has no ids to page by, so they are out of reach of this view.
    pub fn messages_json(&self, limit: Option<usize>, now: Micros) -> String {
        let live = self.global_history.live(now, self.ttl);
        let (count, more) = page(
            live.clone()
                .rev()
                .map(|e| events::json_str_len(e.item.text()) + events::GLOBAL_ENTRY_OVERHEAD),
            page_limit(limit),
            HISTORY_PAGE_BYTES - PAGE_HEAD_BYTES,
        );
        let skip = live.len() - count;
        events::global_messages(live.skip(skip).map(|e| (e.item.text(), e.at)), more)
    }

    /// `GET /rooms`: `{"rooms":[{"room_id":R,"users":N,"messages":N}]}` for the rooms with someone in them
    /// or unexpired messages, sorted by `room_id`. O(rooms), like any listing.
    pub fn rooms_json(&self, now: Micros) -> String {
        let mut rows: Vec<RoomRow<'_>> = self
            .rooms
            .iter()
            .map(|r| RoomRow {
                room_id: &r.name,
                users: r.user_count(),
                messages: r.history.timeline.len() - r.history.timeline.live_start(now, self.ttl),
            })
            .filter(|row| row.users > 0 || row.messages > 0)
            .collect();
        rows.sort_unstable_by(|a, b| a.room_id.cmp(b.room_id));
        events::rooms(&rows)
    }

    /// `GET /rooms/{room}/messages[?since=ID][&limit=N]`:
    /// `{"room_id":R,"ttl_s":N,"messages":[MESSAGE_EVENT...]}`, unexpired messages oldest first, only
    /// ids greater than `since` when given. `room` is an already decoded path segment, cleaned as in
    /// [`Chat::join`]; an unknown room has an empty list.
    ///
    /// At most `limit` messages (default and maximum [`HISTORY_PAGE_MESSAGES`], at least 1) and
    /// [`HISTORY_PAGE_BYTES`] (but always one message if there is one), the oldest first. When cut,
    /// the answer carries `"more":true` (absent otherwise), and the client asks again with
    /// `?since=` the last id it got.
    pub fn room_messages_json(
        &self,
        room: &str,
        since: Option<u64>,
        limit: Option<usize>,
        now: Micros,
    ) -> String {
        let name = names::sanitize_name(room, names::DEFAULT_ROOM);
        let ttl_s = self.cfg.ttl_secs;
        let Some(room) = self.rooms.find(&name) else {
            return events::room_messages(&name, ttl_s, false, std::iter::empty());
        };
        let history = &room.history;
        let start = match since {
            Some(since) => history.start_after(since, now, self.ttl),
            None => history.timeline.live_start(now, self.ttl),
        };
        let owed = history.timeline.starting_at(start);
        let (count, more) = page(
            owed.clone().map(|e| e.item.event.text_len() + 1),
            page_limit(limit),
            HISTORY_PAGE_BYTES - PAGE_HEAD_BYTES,
        );
        events::room_messages(
            &room.name,
            ttl_s,
            more,
            owed.take(count).map(|e| e.item.event.text()),
        )
    }
}

impl Chat {
    /// Cluster mode: `GET /rooms/{room}/messages` for a room this daemon does not follow, from the
    /// room's image read from Redis: the same answer as [`Chat::room_messages_json`] gives for a
    /// followed room.
    pub fn image_messages_json(
        &mut self,
        image: &super::RoomImage,
        since: Option<u64>,
        limit: Option<usize>,
        now: Micros,
    ) -> String {
        // Redis trims its copy every few posts: at most `--history-max`, as a replica keeps.
        let kept = image.messages.len().min(self.cfg.history_max);
        let live = image.messages[image.messages.len() - kept..]
            .iter()
            .filter(|m| m.at + self.ttl > now && since.is_none_or(|s| m.id > s));
        let frames: Vec<_> = live
            .map(|m| {
                events::message(
                    &mut self.frames,
                    m.id,
                    &image.room,
                    &m.client,
                    &m.content,
                    m.at,
                )
            })
            .collect();
        let (count, more) = page(
            frames.iter().map(|f| f.text_len() + 1),
            page_limit(limit),
            HISTORY_PAGE_BYTES - PAGE_HEAD_BYTES,
        );
        let body = events::room_messages(
            &image.room,
            self.cfg.ttl_secs,
            more,
            frames.iter().take(count).map(|f| f.text()),
        );
        for f in frames {
            self.frames.recycle(f);
        }
        body
    }
}

/// How many of the items weighing `sizes` (in order) fit in `max_items` and `max_bytes`, at least one
/// if there is one; and whether some were left out.
pub(super) fn page(
    sizes: impl Iterator<Item = usize>,
    max_items: usize,
    max_bytes: usize,
) -> (usize, bool) {
    let mut count = 0;
    let mut bytes = 0usize;
    for size in sizes {
        if count == max_items || (count > 0 && bytes.saturating_add(size) > max_bytes) {
            return (count, true);
        }
        bytes = bytes.saturating_add(size);
        count += 1;
    }
    (count, false)
}

/// `?limit=` as asked, within `1..=HISTORY_PAGE_MESSAGES`; the maximum when not given.
fn page_limit(limit: Option<usize>) -> usize {
    limit
        .unwrap_or(HISTORY_PAGE_MESSAGES)
        .clamp(1, HISTORY_PAGE_MESSAGES)
}
