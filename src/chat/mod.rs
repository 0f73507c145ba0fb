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
//! - `budget`: the post order across every history, for `--history-max-bytes`.
//! - `events`: the JSON events and views.
//! - `compat`: `--compat fastapi`, the seed apps' vocabulary.
//! - `frames`: the pool of shared frame buffers events are written into.
//! - `global`: the global channel `/ws`.
//! - `views`: the HTTP views, paged.
//! - `names`: cleaning of room and client names.
//! - `ratelimit`: the token buckets, per connection and per peer address.
//! - `time`: RFC 3339 and Unix-seconds formatting.
//! - `replica`: cluster mode (`--redis`): the chat as a replica of the cluster's state, fed by the
//!   reactor with what the cluster bridge (`crate::cluster`) receives.
//!
//! # Timers
//!
//! Each non-empty history (the global one and each room's) needs exactly one expiry timer in the
//! reactor's wheel. [`Chat::global_post`] and [`Chat::post`] return `arm_expiry: Some(due)` when a
//! history that has no timer gets a message; when the timer fires the reactor calls
//! [`Chat::expire_global`] or [`Chat::expire_room`], and re-arms it with the `Some(due)` they return, or
//! drops it on `None`. A history emptied some other way (`--history-max-bytes`, a cluster reset) keeps
//! its timer until it fires. A timer that fires early or late is harmless: expiry removes what is due
//! at `now` and reports the next due time, and every view hides what has expired at `now` whether or
//! not the timer has run.
//!
//! # Memory
//!
//! What a peer can make the chat hold is bounded: every history together by `--history-max-bytes`
//! (the oldest messages, across rooms, leave first), a `welcome` by `welcome_history_bytes` (the rest
//! of a long history follows through [`Chat::catch_up`] as the joiner's socket drains), an HTTP view
//! by [`HISTORY_PAGE_MESSAGES`] and [`HISTORY_PAGE_BYTES`], the per-address rate-limit buckets by the
//! addresses that sent something in the last two windows, and `rate_limited` answers by one per
//! bucket refill.

mod budget;
mod compat;
mod events;
mod frames;
mod global;
mod history;
mod names;
mod presence;
mod ratelimit;
mod replica;
mod room;
mod time;
mod views;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::net::IpAddr;

use serde::Deserialize;

use budget::{Order, Source};
use compat::fastapi_content;
use events::{ErrorCode, FramePool, Welcome};
use history::{Held, Pushed, Removed, Stamped, Timeline};
use presence::GlobalPresence;
pub(crate) use ratelimit::AddressBuckets;
use ratelimit::{Limit, TokenBucket, Verdict};
use room::Rooms;
use time::MICROS_PER_SEC;
use views::page;

pub use events::{EventFrame, Presence};
pub use names::clean_name;
pub(crate) use names::percent_decode;
pub(crate) use names::{sanitize_name, DEFAULT_ROOM};
pub use replica::{
    clean_client, clean_room, ClusterImage, ClusterMessage, Delivery, GlobalImage, ImageApplied,
    Origin, RoomImage,
};
pub use time::rfc3339_micros;

/// Most messages in one answer of `GET /messages` or `GET /rooms/{room}/messages`, and the default of
/// their `?limit=`.
pub const HISTORY_PAGE_MESSAGES: usize = 1000;

/// Most bytes of one answer of `GET /messages` or `GET /rooms/{room}/messages`: 1 MiB, about a
/// thousand long chat lines. A full history of the largest messages, escaped, is hundreds of MiB, and
/// a pipelined client could ask for it over and over; beyond this the answer says `"more":true`.
/// A single message larger than this is still sent, alone.
pub const HISTORY_PAGE_BYTES: usize = 1 << 20;

/// At most one `typing` signal of a member is relayed per this interval (2 s); the rest are
/// dropped and counted. Clients show a signal for a few seconds, so one every 2 s keeps an
/// indicator lit while someone types, and a script sending thousands costs the room nothing.
pub const TYPING_INTERVAL: Micros = 2 * MICROS_PER_SEC;

/// Room of [`HISTORY_PAGE_BYTES`] kept for the answer's fields besides its messages (`room_id` is at
/// most 64 characters).
const PAGE_HEAD_BYTES: usize = 512;

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
    /// `--history-max-bytes`: most bytes held by every history together, counted as
    /// [`EventFrame`] buffers (see [`Counts::history_bytes`]); the oldest messages, whatever their
    /// history, are dropped first.
    pub history_max_bytes: usize,
    /// `--welcome-history-bytes`: most bytes of `message` events spliced into a `welcome`; the rest
    /// is for [`Chat::catch_up`].
    pub welcome_history_bytes: usize,
    /// `--rate-limit`, per connection; `None` when off.
    pub rate_limit: Option<RateLimit>,
    /// `--rate-limit-per-ip`, shared by every connection from one peer address; `None` when off.
    pub rate_limit_per_ip: Option<RateLimit>,
}

/// What a (re)joining client asks for, from the upgrade URL's `?since=ID&epoch=E`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resume<'a> {
    /// The last message id the client has seen (`None`: absent, or not a number).
    pub since: Option<u64>,
    /// The epoch that id belongs to. One that is not the room's means `recovered: false`, whatever
    /// `since` says.
    pub epoch: Option<&'a str>,
}

/// Which application's events the rooms speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Vocabulary {
    /// Wisp's own (SPEC §4.2): `welcome`, `message`, `join`, `leave`, `error`.
    #[default]
    Wisp,
    /// `--compat fastapi`: the seed rooms app's (`system` lines and `presence` lists instead of
    /// `welcome`, `join` and `leave`; Python timestamps; its content rule), and the FastAPI
    /// documentation example's `/ws/{client_id}` channel. See docs/protocol.md, "Compatibility mode".
    FastApi,
}

/// The outcome of a text message on the global channel.
#[derive(Debug, PartialEq, Eq)]
pub enum GlobalPost {
    /// Send the text, unchanged, to every [`Chat::global_members`], the sender included.
    Broadcast {
        /// The text, framed once for all recipients (and kept in the history).
        frame: EventFrame,
        /// `Some(due)`: arm the global expiry timer for `due` (none is armed).
        arm_expiry: Option<Micros>,
    },
    /// Over the sender's rate limit: the text was dropped; send `error` (an `error` event) to the sender.
    RateLimited {
        /// The `error` event JSON, code `rate_limited`.
        error: String,
    },
    /// Over the rate limit again before the refusing bucket admitted a message: dropped, and nothing
    /// to send (the sender was told once already).
    Dropped,
}

/// The outcome of a text message in a room.
#[derive(Debug, PartialEq, Eq)]
pub enum Post {
    /// Send `event` to every [`Chat::room_members`], the sender included.
    Broadcast {
        /// The `message` event, framed once for all recipients (and kept in the history).
        event: EventFrame,
        /// `Some(due)`: arm the room's expiry timer for `due` (none is armed).
        arm_expiry: Option<Micros>,
    },
    /// Refused: send `error` to the sender only; the connection stays open.
    Reply {
        /// The `error` event JSON (`rate_limited` or `bad_request`).
        error: String,
    },
    /// Nothing to do: empty content, a stale key / non-member, or over the rate limit with the
    /// sender already told since the refusing bucket last admitted a message.
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
    /// Nothing to do (as [`Post::Ignored`]).
    Ignored,
}

/// The outcome of a text message on the FastAPI example channel (`/ws/{client_id}`).
#[derive(Debug, PartialEq, Eq)]
pub enum DemoPost {
    /// Send `own` (`You wrote: TEXT`) to the sender, then `all` (`Client #ID says: TEXT`) to every
    /// [`Chat::demo_members`], the sender included, as the example does.
    Broadcast {
        /// The sender's own line.
        own: String,
        /// The line for everyone.
        all: EventFrame,
    },
    /// Over the rate limit: dropped; send `error` (plain text, which is all that client shows) to
    /// the sender.
    RateLimited {
        /// The text to send.
        error: String,
    },
    /// Over the rate limit again, and already told: dropped silently.
    Dropped,
}

/// The outcome of [`Chat::join`].
#[derive(Debug)]
pub struct Joined {
    /// The room, for every later call about this member.
    pub key: RoomKey,
    /// The name in use (cleaned and de-duplicated).
    pub name: String,
    /// The `welcome` event JSON, the joiner's first frame; empty under [`Vocabulary::FastApi`],
    /// where the joiner gets its history through [`Chat::catch_up`] instead.
    pub welcome: String,
    /// The `join` event, for every other member (`room_members` minus the joiner).
    pub join_event: EventFrame,
    /// `Some(id)`: `welcome`'s history was cut at `welcome_history_bytes` after the message `id`
    /// (and says `"history_complete":false`). The reactor then sends the rest with
    /// [`Chat::catch_up`] as the joiner's socket drains, and sends it no live `message` broadcast
    /// until that is done: those are in the history too, so the joiner gets every message once, in
    /// order.
    pub catch_up: Option<u64>,
    /// False when the joiner is another tab of someone already in the room (same name and token,
    /// [`Chat::join_with_token`]): then nobody is told, `join_event` is not for sending.
    pub announce: bool,
}

/// What [`Chat::catch_up`] returns: the next stored `message` events for a joiner.
#[derive(Debug, Default)]
pub struct CatchUp {
    /// The events, oldest first: the history's own frames (shared, not copied).
    pub frames: Vec<EventFrame>,
    /// `Some(id)`: more remain after the message `id`, the last in `frames`; ask again from it.
    pub next: Option<u64>,
}

/// Sizes for `/healthz` and `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    /// Live rooms (`wisp_rooms_active`).
    pub rooms: usize,
    /// Messages retained in every room and the global channel (`wisp_history_messages`).
    pub history_messages: usize,
    /// Bytes they hold, as counted against `--history-max-bytes` (`wisp_history_bytes`): each
    /// message's frame buffer, escaped JSON included; not the bookkeeping around it.
    pub history_bytes: usize,
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
    /// Bytes those hold (the sum of every timeline's `bytes`), kept within `cfg.history_max_bytes`.
    history_bytes: usize,
    /// Every retained message in post order, for dropping the oldest when over `history_max_bytes`.
    order: Order,
    expired_total: u64,
    /// Messages dropped to stay within `history_max_bytes` (`wisp_history_dropped_total`).
    budget_dropped_total: u64,
    rate_limited_total: u64,
    /// `typing` signals relayed, and dropped by [`TYPING_INTERVAL`] (`wisp_typing_total`,
    /// `wisp_typing_limited_total`).
    typing_total: u64,
    typing_limited_total: u64,
    /// The buckets of `--rate-limit-per-ip`.
    addresses: AddressBuckets,
    /// Cluster mode: the last global-channel sequence number stored, to skip repeats.
    cluster_global_seq: u64,
    /// Where room events and global messages are framed, into buffers the histories give back.
    frames: FramePool,
    /// The rooms' vocabulary: Wisp's own, or `--compat fastapi`.
    vocabulary: Vocabulary,
    /// The FastAPI example channel `/ws/{client_id}` (`--compat fastapi` only).
    demo_members: GlobalPresence,
    /// The `client_id` of each [`Chat::demo_members`], from its path.
    demo_names: presence::IdMap<Box<str>>,
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
            addresses: AddressBuckets::new(cfg.rate_limit_per_ip),
            cfg,
            global_members: GlobalPresence::default(),
            global_history: Timeline::default(),
            rooms: Rooms::new(epoch_seed),
            history_messages: 0,
            history_bytes: 0,
            order: Order::default(),
            expired_total: 0,
            budget_dropped_total: 0,
            rate_limited_total: 0,
            typing_total: 0,
            typing_limited_total: 0,
            cluster_global_seq: 0,
            frames: FramePool::default(),
            vocabulary: Vocabulary::Wisp,
            demo_members: GlobalPresence::default(),
            demo_names: presence::IdMap::default(),
        }
    }

    /// The chat speaking `vocabulary` in its rooms (the default is [`Vocabulary::Wisp`]).
    pub fn with_vocabulary(mut self, vocabulary: Vocabulary) -> Chat {
        self.vocabulary = vocabulary;
        self.frames.times = vocabulary.into();
        self
    }

    /// The rooms' vocabulary.
    pub fn vocabulary(&self) -> Vocabulary {
        self.vocabulary
    }

    /// An `error` event in the rooms' vocabulary.
    fn error_event(&self, code: ErrorCode, text: &str, now: Micros) -> String {
        match self.vocabulary {
            Vocabulary::Wisp => events::error(code, text),
            Vocabulary::FastApi => events::compat_error(code, text, now),
        }
    }

    /// The `error` a client gets for a text sent before its cluster join was answered, over the
    /// number kept meanwhile.
    pub fn joining_overflow_error(&self, now: Micros) -> String {
        self.error_event(
            ErrorCode::RateLimited,
            "too many messages before welcome",
            now,
        )
    }

    fn new_bucket(&self, now: Micros) -> Option<TokenBucket> {
        self.cfg
            .rate_limit
            .as_ref()
            .map(|l| TokenBucket::full(l, now))
    }

    fn rate_limit_text(&self, by: Limit) -> String {
        let (limit, from) = match by {
            Limit::Connection => (self.cfg.rate_limit.as_ref(), ""),
            Limit::Address => (self.addresses.limit(), " from one address"),
        };
        match limit {
            Some(l) => format!(
                "rate limit exceeded: at most {} messages per {} s{from}",
                l.tokens, l.per_secs
            ),
            None => "rate limit exceeded".to_owned(),
        }
    }

    /// The answer to a refused message: `Some(error)` the first time its bucket refuses since it last
    /// admitted one, `None` (drop silently) after that. Counted either way.
    fn refused(&mut self, by: Limit, tell: bool, now: Micros) -> Option<String> {
        self.rate_limited_total += 1;
        tell.then(|| self.error_event(ErrorCode::RateLimited, &self.rate_limit_text(by), now))
    }

    /// Accounts for a push into the history `source` (what `--history-max` dropped, and the message
    /// itself if kept), then drops the oldest messages until every history together is within
    /// `--history-max-bytes`. Returns the expiry timer to arm, if the history needs one.
    fn account_push(&mut self, source: Source, pushed: &Pushed, now: Micros) -> Option<Micros> {
        self.account_removed(pushed.dropped);
        if let Some(kept) = pushed.kept {
            self.history_messages += 1;
            self.history_bytes += kept.bytes;
            let (rooms, global) = (&self.rooms, &self.global_history);
            self.order
                .push(source, kept.ordinal, |s, o| holds(rooms, global, s, o));
            self.trim_to_budget(now);
        }
        pushed.arm.then(|| pushed.at.saturating_add(self.ttl))
    }

    fn account_removed(&mut self, removed: Removed) {
        self.history_messages -= removed.messages;
        self.history_bytes -= removed.bytes;
    }

    /// Drops the oldest messages, whatever their history, while every history together holds more
    /// than `--history-max-bytes`.
    ///
    /// The newest message always stays: one larger than the whole budget is stored alone (it was
    /// received and is being sent anyway, and keeping it keeps ids consecutive in its history), so what
    /// is held is at most the budget or one message. A history emptied here keeps its expiry timer,
    /// and a room emptied here is freed by that timer (or when its last member leaves), not here,
    /// so that no caller's key goes stale under it.
    fn trim_to_budget(&mut self, now: Micros) {
        while self.history_bytes > self.cfg.history_max_bytes && self.history_messages > 1 {
            let Some((source, ordinal)) = self.order.pop_front() else {
                debug_assert!(false, "bug: messages held but none in the order");
                return;
            };
            let oldest = match source {
                Source::Global => pop_if_front(&mut self.global_history, ordinal),
                Source::Room(key) => self.rooms.get_mut(key).and_then(|r| {
                    pop_if_front(&mut r.history.timeline, ordinal).map(|old| Stamped {
                        at: old.at,
                        item: old.item.event,
                    })
                }),
            };
            // A reference to a message already gone (expired, `--history-max`, a freed room) is
            // skipped.
            let Some(old) = oldest else { continue };
            self.account_removed(Removed {
                messages: 1,
                bytes: old.item.buffer_len(),
            });
            if old.at.saturating_add(self.ttl) <= now {
                self.expired_total += 1; // its timer had not run yet
            } else {
                self.budget_dropped_total += 1;
            }
            self.frames.recycle(old.item);
        }
    }

    fn account_expiry(&mut self, removed: Removed, now: Micros) {
        self.account_removed(removed);
        self.expired_total += removed.messages as u64;
        // A timer firing is a good moment to forget the address buckets that filled up again.
        self.addresses.sweep(now);
    }

    // --- rooms `/ws/{room}/{client}` (SPEC §4.2, §4.4)

    /// `m`, connected from `ip`, joins `room` as `client`.
    ///
    /// `room` and `client` are path segments the HTTP layer has already percent-decoded; they are cleaned
    /// here (control and format characters and `/` removed, trimmed, cut to 64 characters, empty →
    /// `general` / `anonymous`) but not decoded again. The room is created if needed, with a new epoch.
    /// The name is de-duplicated (`alice`, `alice#2`, …, smallest free suffix). The `welcome` history
    /// follows the recovery rules of SPEC §4.2/§4.4 for `resume`, cut at `welcome_history_bytes`
    /// ([`Joined::catch_up`]). `ip` keys the `--rate-limit-per-ip` bucket, which outlives the
    /// connection: leaving and joining again does not refill it.
    ///
    /// The reactor sends `welcome` to `m` and `join_event` to every other member of
    /// [`Chat::room_members`], and must call [`Chat::leave`] when `m`'s connection ends for any reason.
    pub fn join(
        &mut self,
        room: &str,
        client: &str,
        m: MemberId,
        ip: IpAddr,
        resume: Resume<'_>,
        now: Micros,
    ) -> Joined {
        self.join_with_token(room, client, None, m, ip, resume, now)
    }

    /// [`Chat::join`], with the per-browser `token` of the upgrade URL (`?token=`): when a member
    /// called `client` is in the room with the same token, `m` is another tab of that person. It
    /// shares the name (no `alice#2`), the room's `users` list it once, and nobody is told it came
    /// ([`Joined::announce`]) or, while another of its tabs is open, that it left.
    #[allow(clippy::too_many_arguments)]
    pub fn join_with_token(
        &mut self,
        room: &str,
        client: &str,
        token: Option<&str>,
        m: MemberId,
        ip: IpAddr,
        resume: Resume<'_>,
        now: Micros,
    ) -> Joined {
        let room_name = names::sanitize_name(room, names::DEFAULT_ROOM);
        let wanted = names::sanitize_name(client, names::DEFAULT_CLIENT);
        let bucket = self.new_bucket(now);
        let (key, room) = self.rooms.open(&room_name);
        let (member, new_person) =
            room.presence
                .join_with_token(m, wanted, token.filter(|t| !t.is_empty()), bucket, ip);
        let name = member.name.to_string();
        let mut joined = self.welcome(key, name, resume, now);
        joined.announce = new_person;
        joined
    }

    /// The `welcome` for `name`, who has just joined `key`, with its history chosen by the recovery
    /// rules for `resume` and cut at `welcome_history_bytes`, and the `join` event for everyone else.
    /// Shared by single-node and cluster joins.
    fn welcome(&mut self, key: RoomKey, name: String, resume: Resume<'_>, now: Micros) -> Joined {
        let room = self
            .rooms
            .get(key)
            .expect("bug: welcome for a room that is not open");
        let recovery = room
            .history
            .recover(resume.since, resume.epoch, &room.epoch, now, self.ttl);
        let owed = room.history.timeline.starting_at(recovery.start);
        // The oldest messages owed, up to the budget: the client shows them first, and the rest
        // follows in order. A comma each in the array.
        let (count, cut) = page(
            owed.clone().map(|e| e.item.event.text_len() + 1),
            usize::MAX,
            self.cfg.welcome_history_bytes,
        );
        let catch_up = cut
            .then(|| owed.clone().nth(count - 1).map(|e| e.item.id))
            .flatten();
        // The seed rooms app has no `welcome`: its joiner gets the history as `message` events
        // (through `catch_up`) and the room's `presence`, which the server sends.
        let welcome = if self.vocabulary == Vocabulary::FastApi {
            String::new()
        } else {
            events::welcome(
                Welcome {
                    room_id: &room.name,
                    client_id: &name,
                    users: room.users(),
                    ttl_s: self.cfg.ttl_secs,
                    epoch: &room.epoch,
                    recovered: recovery.recovered,
                    history_complete: catch_up.is_none(),
                },
                owed.take(count).map(|e| e.item.event.text()),
            )
        };
        let join_event = events::presence(&mut self.frames, Presence::Join, &room.name, &name, now);
        Joined {
            key,
            name,
            welcome,
            join_event,
            catch_up,
            announce: true,
        }
    }

    /// The stored `message` events of room `key` after the message `after_id`, oldest first, up to
    /// `max_bytes` of frames (at least one, however large), for a joiner whose `welcome` was cut
    /// ([`Joined::catch_up`]). `next` says where to ask from next time, while more remain.
    ///
    /// Messages that expire meanwhile are skipped (the client would hide them anyway); messages dropped
    /// meanwhile by `--history-max` or `--history-max-bytes` are missed, and the client sees a gap in
    /// the ids. A stale key gives nothing.
    pub fn catch_up(&self, room: RoomKey, after_id: u64, max_bytes: usize, now: Micros) -> CatchUp {
        let Some(r) = self.rooms.get(room) else {
            return CatchUp::default();
        };
        let start = r.history.start_after(after_id, now, self.ttl);
        let owed = r.history.timeline.starting_at(start);
        let (count, more) = page(
            owed.clone().map(|e| e.item.event.frame().len()),
            usize::MAX,
            max_bytes,
        );
        let frames: Vec<EventFrame> = owed.take(count).map(|e| e.item.event.clone()).collect();
        let next = more
            .then(|| r.history.timeline.get(start + count - 1).map(|e| e.item.id))
            .flatten();
        CatchUp { frames, next }
    }

    /// `m` leaves the room `key`.
    ///
    /// Returns the `leave` event for the remaining members ([`Chat::room_members`], read after this call);
    /// `None` if `m` was not a member (or `key` is stale), nobody is left to tell, or `m` was one of
    /// several tabs of one person ([`Chat::join_with_token`]) and another is still here. A room with nobody in
    /// it and nothing retained is freed here, which makes `key` stale; one that still holds messages is
    /// freed by [`Chat::expire_room`] when the last one expires.
    pub fn leave(&mut self, key: RoomKey, m: MemberId, now: Micros) -> Option<EventFrame> {
        let room = self.rooms.get_mut(key)?;
        let gone = room.presence.leave(m)?;
        if room.is_vacant() {
            self.rooms.free(key);
            return None;
        }
        if room.presence.has_name(&gone.name) {
            return None; // another tab of the same person is still here
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
    /// In order: the sender's rate limits (over one: `Reply` with a `rate_limited` error, or `Ignored`
    /// when the sender was already told since that bucket last admitted a message); then the content:
    /// text that parses as a JSON object must carry a string `content` (else `Reply` with a
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

    /// The checking half of [`Chat::post`]: the sender's rate limits (a token is taken from its
    /// bucket and from its address's), then the content rules; returns the trimmed content to store,
    /// or what to answer instead.
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
        let conn = member.bucket.as_mut().zip(self.cfg.rate_limit.as_ref());
        if let Verdict::Refuse { by, tell } =
            ratelimit::admit(conn, &mut self.addresses, Some(member.ip), now)
        {
            return match self.refused(by, tell, now) {
                Some(error) => Checked::Reply { error },
                None => Checked::Ignored,
            };
        }
        let content = match self.vocabulary {
            Vocabulary::Wisp => room_content(text),
            Vocabulary::FastApi => Some(fastapi_content(text)),
        };
        let Some(content) = content else {
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

    /// A `typing` signal from member `m` of room `key`: a JSON object whose `type` is `"typing"`
    /// (and without `content`). `None` when `text` is not one (then it is a chat message, for
    /// [`Chat::post`]); `Some(None)` when it is one but is dropped (within [`TYPING_INTERVAL`] of
    /// the member's last relayed one, a stale key, a non-member, or `--compat fastapi`, whose
    /// clients know no such event); `Some(Some(event))` for every other member of the room. Never
    /// stored, and not counted against the chat rate limits.
    pub fn typing(
        &mut self,
        key: RoomKey,
        m: MemberId,
        text: &str,
        now: Micros,
    ) -> Option<Option<EventFrame>> {
        #[derive(Deserialize)]
        struct Signal<'a> {
            #[serde(rename = "type", borrow)]
            kind: Cow<'a, str>,
            content: Option<serde::de::IgnoredAny>,
        }
        if self.vocabulary != Vocabulary::Wisp
            || !text.trim_start().starts_with('{')
            || !text.contains("typing")
        {
            return None;
        }
        match serde_json::from_str::<Signal<'_>>(text) {
            Ok(s) if s.kind == "typing" && s.content.is_none() => {}
            _ => return None,
        }
        let Some(room) = self.rooms.get_mut(key) else {
            return Some(None);
        };
        let Some(member) = room.presence.get_mut(m) else {
            return Some(None);
        };
        if member.typed_at != 0 && now < member.typed_at.saturating_add(TYPING_INTERVAL) {
            self.typing_limited_total += 1;
            return Some(None);
        }
        member.typed_at = now.max(1);
        self.typing_total += 1;
        let event = events::typing(&mut self.frames, &room.name, &member.name, now);
        Some(Some(event))
    }

    /// `typing` signals relayed so far (`wisp_typing_total`).
    pub fn typing_total(&self) -> u64 {
        self.typing_total
    }

    /// `typing` signals dropped for coming within [`TYPING_INTERVAL`] (`wisp_typing_limited_total`).
    pub fn typing_limited_total(&self) -> u64 {
        self.typing_limited_total
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
            arm_expiry: self.account_push(Source::Room(key), &pushed, now),
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

    /// Stores a message from `sender` (a name, not a member: the server API) in room `room` (already
    /// cleaned; opened if needed), exactly as [`Chat::post_content`] stores a member's: next id,
    /// history, expiry. Content is trimmed; empty content is `None`.
    pub fn publish(
        &mut self,
        room: &str,
        sender: &str,
        content: &str,
        now: Micros,
    ) -> Option<(RoomKey, Post)> {
        let content = content.trim();
        if content.is_empty() {
            return None;
        }
        let (key, room) = self.rooms.open(room);
        let id = room.history.next_id();
        let at = room.history.timeline.stamp(now);
        let event = events::message(&mut self.frames, id, &room.name, sender, content, at);
        let pushed = room
            .history
            .keep(at, id, &event, self.cfg.history_max, &mut self.frames);
        let arm_expiry = self.account_push(Source::Room(key), &pushed, now);
        Some((key, Post::Broadcast { event, arm_expiry }))
    }

    /// The key of room `room` (already cleaned), if it exists.
    pub fn room_key(&self, room: &str) -> Option<RoomKey> {
        self.rooms.key_of(room)
    }

    /// Everyone in room `room` (already cleaned): local members in join order, then, in a cluster,
    /// members on other daemons.
    pub fn room_users(&self, room: &str) -> Vec<String> {
        self.rooms
            .find(room)
            .map_or_else(Vec::new, |r| r.users().map(str::to_owned).collect())
    }

    /// Whether `name` (already cleaned) is someone's name in room `room` (already cleaned), here or,
    /// in a cluster, as far as this daemon's replica knows.
    pub fn name_in_use(&self, room: &str, name: &str) -> bool {
        self.rooms
            .find(room)
            .is_some_and(|r| r.users().any(|u| u == name))
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
        self.account_expiry(expired.removed, now);
        if vacant {
            self.rooms.free(key);
        }
        expired.next_due
    }

    /// `--welcome-history-bytes`: the most history bytes in one `welcome`, and in one part of the
    /// catch-up that follows it.
    pub fn welcome_history_bytes(&self) -> usize {
        self.cfg.welcome_history_bytes
    }

    /// Live rooms, retained messages and their bytes, O(1).
    pub fn counts(&self) -> Counts {
        Counts {
            rooms: self.rooms.len(),
            history_messages: self.history_messages,
            history_bytes: self.history_bytes,
        }
    }

    /// Messages removed by expiry so far, rooms and global (`wisp_messages_expired_total`); messages
    /// dropped by `--history-max` are not counted, nor those dropped by `--history-max-bytes` before
    /// their time.
    pub fn expired_total(&self) -> u64 {
        self.expired_total
    }

    /// Messages dropped before their time to keep every history within `--history-max-bytes`
    /// (`wisp_history_dropped_total`).
    pub fn history_dropped_total(&self) -> u64 {
        self.budget_dropped_total
    }

    /// Messages refused by the rate limits so far, told or not (`wisp_rate_limited_total`).
    pub fn rate_limited_total(&self) -> u64 {
        self.rate_limited_total
    }
}

/// Whether the message `ordinal` of `source` is still held.
fn holds(rooms: &Rooms, global: &Timeline<EventFrame>, source: Source, ordinal: u64) -> bool {
    match source {
        Source::Global => global.holds(ordinal),
        Source::Room(key) => rooms
            .get(key)
            .is_some_and(|r| r.history.timeline.holds(ordinal)),
    }
}

/// Removes the oldest entry of `timeline` if it is the one with `ordinal`; `None` if that one is gone
/// already.
fn pop_if_front<T: Held>(timeline: &mut Timeline<T>, ordinal: u64) -> Option<Stamped<T>> {
    if timeline.front_ordinal() == Some(ordinal) {
        timeline.pop_front()
    } else {
        // Budget order and history order agree, so anything older in this history has left it.
        debug_assert!(!timeline.holds(ordinal), "bug: budget order out of step");
        None
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
