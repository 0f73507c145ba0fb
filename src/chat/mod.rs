//! The chat's rules, with no I/O: the global channel (SPEC §4.1), rooms (§4.2, §4.4) and the chat's
//! HTTP views (§3).
//!
//! Like quinn-proto, this module has no networking code and never reads a clock: the reactor passes in
//! who sent what and the current wall-clock time `now`, and gets back the JSON text to send and to whom.
//! Framing, output queues, timers and sockets are the reactor's; parsing the request path is the HTTP
//! layer's.
//!
//! # Layout
//!
//! - `mod.rs`: [`Chat`], the one entry point, and the types it trades with the reactor.
//! - `presence`: members of the global channel and of a room, rate-limit buckets, name de-duplication.
//! - `room`: the slab of rooms, found by name or [`RoomKey`], and their epochs.
//! - `history`: retained messages, ids, `?since=` recovery, `--history-max`, expiry.
//! - `events`: the JSON events and views.
//! - `names`: cleaning of room and client names.
//! - `ratelimit`: the token bucket.
//! - `time`: RFC 3339 and Unix-seconds formatting.
//! - `replica`: cluster mode (`--redis`): the chat as a replica of the cluster's state, fed by the
//!   reactor with what the cluster bridge (`crate::cluster`) receives.
//!
//! # Timers
//!
//! Each non-empty history (the global one and each room's) needs exactly one expiry timer in the
//! reactor's wheel. [`Chat::global_post`] and [`Chat::post`] return `arm_expiry: Some(due)` when a
//! history goes from empty to non-empty; when the timer fires the reactor calls [`Chat::expire_global`]
//! or [`Chat::expire_room`], and re-arms it with the `Some(due)` they return, or drops it on `None`. A
//! timer that fires early or late is harmless: expiry removes what is due at `now` and reports the next
//! due time, and every view hides what has expired at `now` whether or not the timer has run.

mod events;
mod history;
mod names;
mod presence;
mod ratelimit;
mod replica;
mod room;
mod time;

#[cfg(test)]
mod tests;

use std::borrow::Cow;

use serde::Deserialize;

use events::{ErrorCode, FramePool, RoomRow, Welcome};
use history::{Pushed, Timeline};
use presence::GlobalPresence;
use ratelimit::TokenBucket;
use room::Rooms;
use time::MICROS_PER_SEC;

pub use events::{EventFrame, Presence};
pub use names::clean_name;
pub(crate) use names::percent_decode;
pub use replica::{
    clean_client, clean_room, ClusterImage, ClusterMessage, Delivery, ImageApplied, Origin,
    RoomImage,
};
pub use time::rfc3339_micros;

/// Opaque id of a connection, chosen by the reactor (it packs slab index + generation).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MemberId(pub u64);

/// A room handle; valid while the room lives.
///
/// It carries the slab slot and that slot's generation, so a key kept after its room was freed (in a
/// timer entry, say) is detected as stale rather than reaching whichever room reuses the slot: every
/// method then treats it as an empty room.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RoomKey {
    index: u32,
    generation: u32,
}

/// Wall-clock time as microseconds since the Unix epoch.
pub type Micros = u64;

/// `--rate-limit N/SECS`: a token bucket of `tokens` tokens, refilled at `tokens` per `per_secs` seconds
/// (SPEC §4.4). `tokens == 0` or `per_secs == 0` means no limit, as `--rate-limit 0` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Bucket size, and tokens refilled per window.
    pub tokens: u32,
    /// The window in seconds.
    pub per_secs: u64,
}

/// The chat's share of the configuration.
#[derive(Clone, Debug)]
pub struct ChatConfig {
    /// `--history-ttl`: how long a message is kept, in seconds.
    pub ttl_secs: u64,
    /// `--history-max`: most messages kept per history (each room, and the global channel); 0 keeps none.
    pub history_max: usize,
    /// `--rate-limit`, per connection; `None` when off.
    pub rate_limit: Option<RateLimit>,
}

/// What a (re)joining client asks for, from the upgrade URL's `?since=ID&epoch=E`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resume<'a> {
    /// The last message id the client has seen.
    pub since: Option<u64>,
    /// The epoch that id belongs to.
    pub epoch: Option<&'a str>,
}

/// The outcome of a text message on the global channel.
#[derive(Debug, PartialEq, Eq)]
pub enum GlobalPost {
    /// Send the text, unchanged, to every [`Chat::global_members`], the sender included.
    Broadcast {
        /// The text, framed once for all recipients (and kept in the history).
        frame: EventFrame,
        /// `Some(due)`: arm the global expiry timer for `due` (the history was empty, so none is armed).
        arm_expiry: Option<Micros>,
    },
    /// Over the sender's rate limit: the text was dropped; send `error` (an `error` event) to the sender.
    RateLimited {
        /// The `error` event JSON, code `rate_limited`.
        error: String,
    },
}

/// The outcome of a text message in a room.
#[derive(Debug, PartialEq, Eq)]
pub enum Post {
    /// Send `event` to every [`Chat::room_members`], the sender included.
    Broadcast {
        /// The `message` event, framed once for all recipients (and kept in the history).
        event: EventFrame,
        /// `Some(due)`: arm the room's expiry timer for `due` (the history was empty, so none is armed).
        arm_expiry: Option<Micros>,
    },
    /// Refused: send `error` to the sender only; the connection stays open.
    Reply {
        /// The `error` event JSON (`rate_limited` or `bad_request`).
        error: String,
    },
    /// Nothing to do: empty content, or a stale key / non-member.
    Ignored,
}

/// The outcome of [`Chat::check_post`]: the first half of [`Chat::post`], for a cluster where the
/// message is stored and numbered elsewhere.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked<'a> {
    /// The message is acceptable; its trimmed, non-empty content (borrowed from the text when it is
    /// plain text or a JSON string without escapes).
    Accept(Cow<'a, str>),
    /// Refused: send `error` to the sender only (as [`Post::Reply`]).
    Reply {
        /// The `error` event JSON (`rate_limited` or `bad_request`).
        error: String,
    },
    /// Nothing to do: empty content, or a stale key / non-member.
    Ignored,
}

/// The outcome of [`Chat::join`].
#[derive(Debug)]
pub struct Joined {
    /// The room, for every later call about this member.
    pub key: RoomKey,
    /// The name in use (cleaned and de-duplicated).
    pub name: String,
    /// The `welcome` event JSON, the joiner's first frame.
    pub welcome: String,
    /// The `join` event, for every other member (`room_members` minus the joiner).
    pub join_event: EventFrame,
}

/// Sizes for `/healthz` and `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    /// Live rooms (`wisp_rooms_active`).
    pub rooms: usize,
    /// Messages retained in every room and the global channel (`wisp_history_messages`).
    pub history_messages: usize,
}

/// All chat state of one daemon.
#[derive(Debug)]
pub struct Chat {
    cfg: ChatConfig,
    /// `cfg.ttl_secs` in microseconds, the unit of every timestamp.
    ttl: Micros,
    global_members: GlobalPresence,
    /// The global channel's messages; the text is kept exactly as received, framed.
    global_history: Timeline<EventFrame>,
    rooms: Rooms,
    /// Messages retained across all histories, kept up to date so `counts` is O(1) for `/metrics`.
    history_messages: usize,
    expired_total: u64,
    rate_limited_total: u64,
    /// Cluster mode: the last global-channel sequence number stored, to skip repeats.
    cluster_global_seq: u64,
    /// Where room events and global messages are framed, into buffers the histories give back.
    frames: FramePool,
}

/// A room message that is a JSON object; only `content` matters, other fields are ignored.
#[derive(Deserialize)]
struct RoomInput<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
}

const BAD_REQUEST_TEXT: &str = "a JSON object must carry a string \"content\"";

impl Chat {
    /// A chat with no rooms and no messages.
    ///
    /// `epoch_seed` differs per daemon start (the reactor passes pid ^ start time), so epochs change on
    /// restart and a client resuming with an old epoch is told `recovered: false`.
    pub fn new(mut cfg: ChatConfig, epoch_seed: u64) -> Chat {
        // SPEC §2: `--rate-limit 0` turns the limit off; a zero window would refill infinitely fast.
        if matches!(cfg.rate_limit, Some(l) if l.tokens == 0 || l.per_secs == 0) {
            cfg.rate_limit = None;
        }
        Chat {
            ttl: cfg.ttl_secs.saturating_mul(MICROS_PER_SEC),
            cfg,
            global_members: GlobalPresence::default(),
            global_history: Timeline::default(),
            rooms: Rooms::new(epoch_seed),
            history_messages: 0,
            expired_total: 0,
            rate_limited_total: 0,
            cluster_global_seq: 0,
            frames: FramePool::default(),
        }
    }

    fn new_bucket(&self, now: Micros) -> Option<TokenBucket> {
        self.cfg
            .rate_limit
            .as_ref()
            .map(|l| TokenBucket::full(l, now))
    }

    fn rate_limit_error(&self) -> String {
        let text = match &self.cfg.rate_limit {
            Some(l) => format!(
                "rate limit exceeded: at most {} messages per {} s",
                l.tokens, l.per_secs
            ),
            None => "rate limit exceeded".to_owned(),
        };
        events::error(ErrorCode::RateLimited, &text)
    }

    /// Takes a token from `bucket`; false (and counted) when the message is over the limit.
    fn admit(
        bucket: Option<&mut TokenBucket>,
        limit: Option<&RateLimit>,
        now: Micros,
        refused: &mut u64,
    ) -> bool {
        let (Some(bucket), Some(limit)) = (bucket, limit) else {
            return true;
        };
        let ok = bucket.try_take(limit, now);
        if !ok {
            *refused += 1;
        }
        ok
    }

    /// Updates `history_messages` after a push and says whether to arm a timer.
    fn account_push(&mut self, pushed: &Pushed) -> Option<Micros> {
        self.history_messages += usize::from(pushed.stored);
        self.history_messages -= pushed.dropped;
        (pushed.stored && pushed.was_empty).then(|| pushed.at.saturating_add(self.ttl))
    }

    // --- global channel `/ws` (SPEC §4.1)

    /// Adds `m` to the global channel, with a full rate-limit bucket.
    pub fn global_join(&mut self, m: MemberId, now: Micros) {
        let bucket = self.new_bucket(now);
        self.global_members.join(m, bucket);
    }

    /// Removes `m` from the global channel (no-op for a non-member). O(1).
    pub fn global_leave(&mut self, m: MemberId) {
        self.global_members.leave(m);
    }

    /// A text message from `m` on the global channel.
    ///
    /// Applies `m`'s rate limit, then stores `text` with its arrival time in the global history (at most
    /// `history_max`, oldest dropped). The caller sends `text` itself, unchanged, to every
    /// [`Chat::global_members`]. A sender that is not a global member is not rate limited (it has no
    /// bucket); the reactor should not let that happen.
    pub fn global_post(&mut self, m: MemberId, text: &str, now: Micros) -> GlobalPost {
        if let Err(error) = self.global_admit(m, now) {
            return GlobalPost::RateLimited { error };
        }
        let (frame, arm_expiry) = self.global_store(text, now);
        GlobalPost::Broadcast { frame, arm_expiry }
    }

    /// The rate limit half of [`Chat::global_post`]: takes a token from `m`'s bucket, or returns the
    /// `error` event to send it.
    pub fn global_admit(&mut self, m: MemberId, now: Micros) -> Result<(), String> {
        let bucket = self.global_members.bucket_mut(m);
        if Self::admit(
            bucket,
            self.cfg.rate_limit.as_ref(),
            now,
            &mut self.rate_limited_total,
        ) {
            Ok(())
        } else {
            Err(self.rate_limit_error())
        }
    }

    /// The storing half of [`Chat::global_post`]: keeps `text` with arrival time `now`. Returns `text`
    /// framed for every member, and `Some(due)` when the global expiry timer must be armed.
    pub fn global_store(&mut self, text: &str, now: Micros) -> (EventFrame, Option<Micros>) {
        let frame = self.frames.raw(text);
        let at = self.global_history.stamp(now);
        let frames = &mut self.frames;
        let pushed = self
            .global_history
            .push(at, frame.clone(), self.cfg.history_max, |old| {
                frames.recycle(old)
            });
        (frame, self.account_push(&pushed))
    }

    /// Everyone on the global channel, in no particular order (leaving is a `swap_remove`).
    pub fn global_members(&self) -> &[MemberId] {
        self.global_members.members()
    }

    /// The global expiry timer fired: drops the messages with `arrival + ttl <= now` and returns when the
    /// next one is due, or `None` when the global history is empty (then no timer is needed until
    /// [`Chat::global_post`] asks for one).
    pub fn expire_global(&mut self, now: Micros) -> Option<Micros> {
        let frames = &mut self.frames;
        let expired = self
            .global_history
            .expire(now, self.ttl, |old| frames.recycle(old));
        self.account_expiry(expired.removed);
        expired.next_due
    }

    fn account_expiry(&mut self, removed: usize) {
        self.history_messages -= removed;
        self.expired_total += removed as u64;
    }

    // --- rooms `/ws/{room}/{client}` (SPEC §4.2, §4.4)

    /// `m` joins `room` as `client`.
    ///
    /// `room` and `client` are path segments the HTTP layer has already percent-decoded; they are cleaned
    /// here (controls and `/` removed, trimmed, cut to 64 characters, empty → `general` / `anonymous`) but
    /// not decoded again. The room is created if needed, with a new epoch. The name is de-duplicated
    /// (`alice`, `alice#2`, …, smallest free suffix). The `welcome` history follows the recovery rules of
    /// SPEC §4.2/§4.4 for `resume`.
    ///
    /// The reactor sends `welcome` to `m` and `join_event` to every other member of
    /// [`Chat::room_members`], and must call [`Chat::leave`] when `m`'s connection ends for any reason.
    pub fn join(
        &mut self,
        room: &str,
        client: &str,
        m: MemberId,
        resume: Resume<'_>,
        now: Micros,
    ) -> Joined {
        let room_name = names::sanitize_name(room, names::DEFAULT_ROOM);
        let wanted = names::sanitize_name(client, names::DEFAULT_CLIENT);
        let bucket = self.new_bucket(now);
        let (key, room) = self.rooms.open(&room_name);
        let name = room.presence.join(m, wanted, bucket).name.to_string();
        self.welcome(key, name, resume, now)
    }

    /// The `welcome` for `name`, who has just joined `key`, with its history chosen by the recovery
    /// rules for `resume`, and the `join` event for everyone else. Shared by single-node and cluster joins.
    fn welcome(&mut self, key: RoomKey, name: String, resume: Resume<'_>, now: Micros) -> Joined {
        let room = self
            .rooms
            .get(key)
            .expect("bug: welcome for a room that is not open");
        let recovery = room
            .history
            .recover(resume.since, resume.epoch, &room.epoch, now, self.ttl);
        let welcome = events::welcome(
            Welcome {
                room_id: &room.name,
                client_id: &name,
                users: room.users(),
                ttl_s: self.cfg.ttl_secs,
                epoch: &room.epoch,
                recovered: recovery.recovered,
            },
            room.history
                .timeline
                .starting_at(recovery.start)
                .map(|e| e.item.event.text()),
        );
        let join_event = events::presence(&mut self.frames, Presence::Join, &room.name, &name, now);
        Joined {
            key,
            name,
            welcome,
            join_event,
        }
    }

    /// `m` leaves the room `key`.
    ///
    /// Returns the `leave` event for the remaining members ([`Chat::room_members`], read after this call);
    /// `None` if `m` was not a member (or `key` is stale) or nobody is left to tell. A room with nobody in
    /// it and nothing retained is freed here, which makes `key` stale; one that still holds messages is
    /// freed by [`Chat::expire_room`] when the last one expires.
    pub fn leave(&mut self, key: RoomKey, m: MemberId, now: Micros) -> Option<EventFrame> {
        let room = self.rooms.get_mut(key)?;
        let gone = room.presence.leave(m)?;
        if room.is_vacant() {
            self.rooms.free(key);
            return None;
        }
        (!room.presence.is_empty()).then(|| {
            events::presence(
                &mut self.frames,
                Presence::Leave,
                &room.name,
                &gone.name,
                now,
            )
        })
    }

    /// A text message from member `m` of room `key`.
    ///
    /// In order: the sender's rate limit (over it: `Reply` with a `rate_limited` error); then the
    /// content: text that parses as a JSON object must carry a string `content` (else `Reply` with a
    /// `bad_request` error), any other text (not JSON, or JSON that is not an object) is the content
    /// itself; the content is trimmed, and empty content is `Ignored`. Otherwise the message gets the
    /// next id, is stored, and its `message` event is returned for every member, the sender included.
    pub fn post(&mut self, key: RoomKey, m: MemberId, text: &str, now: Micros) -> Post {
        match self.check_post(key, m, text, now) {
            Checked::Accept(content) => self.post_content(key, m, &content, now),
            Checked::Reply { error } => Post::Reply { error },
            Checked::Ignored => Post::Ignored,
        }
    }

    /// The checking half of [`Chat::post`]: the sender's rate limit (a token is taken), then the
    /// content rules; returns the trimmed content to store, or what to answer instead.
    pub fn check_post<'t>(
        &mut self,
        key: RoomKey,
        m: MemberId,
        text: &'t str,
        now: Micros,
    ) -> Checked<'t> {
        let Some(room) = self.rooms.get_mut(key) else {
            return Checked::Ignored;
        };
        let Some(member) = room.presence.get_mut(m) else {
            return Checked::Ignored;
        };
        if !Self::admit(
            member.bucket.as_mut(),
            self.cfg.rate_limit.as_ref(),
            now,
            &mut self.rate_limited_total,
        ) {
            return Checked::Reply {
                error: self.rate_limit_error(),
            };
        }
        let Some(content) = room_content(text) else {
            return Checked::Reply {
                error: events::error(ErrorCode::BadRequest, BAD_REQUEST_TEXT),
            };
        };
        let content = match content {
            Cow::Borrowed(c) => Cow::Borrowed(c.trim()),
            Cow::Owned(c) if c.trim().len() == c.len() => Cow::Owned(c),
            Cow::Owned(c) => Cow::Owned(c.trim().to_owned()),
        };
        if content.is_empty() {
            return Checked::Ignored;
        }
        Checked::Accept(content)
    }

    /// The storing half of [`Chat::post`]: `content` (already checked) gets the next local id and is
    /// stored; returns its `message` event for every member.
    pub fn post_content(&mut self, key: RoomKey, m: MemberId, content: &str, now: Micros) -> Post {
        let Some(room) = self.rooms.get_mut(key) else {
            return Post::Ignored;
        };
        let Some(member) = room.presence.get_mut(m) else {
            return Post::Ignored;
        };
        let id = room.history.next_id();
        let at = room.history.timeline.stamp(now);
        let event = events::message(&mut self.frames, id, &room.name, &member.name, content, at);
        let pushed = room
            .history
            .keep(at, id, &event, self.cfg.history_max, &mut self.frames);
        Post::Broadcast {
            event,
            arm_expiry: self.account_push(&pushed),
        }
    }

    /// Members of the room in join order; empty for a stale key.
    pub fn room_members(&self, key: RoomKey) -> &[MemberId] {
        self.rooms.get(key).map_or(&[], |r| r.presence.members())
    }

    /// The name `m` has in room `key`; `None` for a non-member or a stale key.
    pub fn member_name(&self, key: RoomKey, m: MemberId) -> Option<&str> {
        let room = self.rooms.get(key)?;
        room.presence.name_of(m)
    }

    /// The room's name (`room_id`), for logs; `None` for a stale key.
    pub fn room_id(&self, key: RoomKey) -> Option<&str> {
        self.rooms.get(key).map(|r| &*r.name)
    }

    /// The room's expiry timer fired: drops the messages with `timestamp + ttl <= now` and returns when
    /// the next one is due. `None` when no message is left (then no timer is needed until
    /// [`Chat::post`] asks for one, and the room is freed if nobody is in it) or when `key` is stale.
    pub fn expire_room(&mut self, key: RoomKey, now: Micros) -> Option<Micros> {
        let room = self.rooms.get_mut(key)?;
        let expired = room.history.expire(now, self.ttl, &mut self.frames);
        let vacant = room.is_vacant();
        self.account_expiry(expired.removed);
        if vacant {
            self.rooms.free(key);
        }
        expired.next_due
    }

    // --- HTTP views (SPEC §3); each hides what has expired at `now` even if no timer has run yet

    /// `GET /messages`: `{"messages":[{"message":TEXT,"timestamp":UNIX_SECONDS_FLOAT}]}`, the global
    /// channel's unexpired messages, oldest first.
    pub fn messages_json(&self, now: Micros) -> String {
        events::global_messages(
            self.global_history
                .live(now, self.ttl)
                .map(|e| (e.item.text(), e.at)),
        )
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

    /// `GET /rooms/{room}/messages[?since=ID]`: `{"room_id":R,"ttl_s":N,"messages":[MESSAGE_EVENT...]}`,
    /// unexpired messages oldest first, only ids greater than `since` when given. `room` is an already
    /// decoded path segment, cleaned as in [`Chat::join`]; an unknown room has an empty list.
    pub fn room_messages_json(&self, room: &str, since: Option<u64>, now: Micros) -> String {
        let name = names::sanitize_name(room, names::DEFAULT_ROOM);
        let ttl_s = self.cfg.ttl_secs;
        let Some(room) = self.rooms.find(&name) else {
            return events::room_messages(&name, ttl_s, std::iter::empty());
        };
        let history = &room.history;
        let start = match since {
            Some(since) => history.start_after(since, now, self.ttl),
            None => history.timeline.live_start(now, self.ttl),
        };
        events::room_messages(
            &room.name,
            ttl_s,
            history
                .timeline
                .starting_at(start)
                .map(|e| e.item.event.text()),
        )
    }

    /// Live rooms and retained messages, O(1).
    pub fn counts(&self) -> Counts {
        Counts {
            rooms: self.rooms.len(),
            history_messages: self.history_messages,
        }
    }

    /// Messages removed by expiry so far, rooms and global (`wisp_messages_expired_total`); messages
    /// dropped by `--history-max` are not counted.
    pub fn expired_total(&self) -> u64 {
        self.expired_total
    }

    /// Messages refused by the rate limit so far (`wisp_rate_limited_total`).
    pub fn rate_limited_total(&self) -> u64 {
        self.rate_limited_total
    }
}

/// The content of a room message (SPEC §4.4), or `None` for a JSON object without a string `content`.
///
/// Only text starting with `{` can be a JSON object, so plain chat text skips the parser. serde_json's
/// error category tells "valid JSON of the wrong shape" (`content` missing, not a string, duplicated:
/// bad request) from "not JSON at all" (plain text, e.g. `{hello}`).
fn room_content(text: &str) -> Option<Cow<'_, str>> {
    if !text.trim_start().starts_with('{') {
        return Some(Cow::Borrowed(text));
    }
    match serde_json::from_str::<RoomInput<'_>>(text) {
        Ok(input) => input.content,
        Err(e) if e.is_data() => None,
        Err(_) => Some(Cow::Borrowed(text)),
    }
}
