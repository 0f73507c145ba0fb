//! Cluster mode (`--redis`, SPEC §7): the chat as a replica of the cluster's state.
//!
//! In a cluster, Redis holds the truth: each room's epoch, id sequence, history and members, and the
//! global channel's history. Every daemon keeps a replica of the rooms it follows (those with a member
//! on it) and of the global channel in the ordinary [`Chat`] structures, fed in order by the reactor
//! with what the cluster bridge (`crate::cluster`) receives on its subscriptions, plus images
//! ([`ClusterImage`]) when it starts following a room and whenever a feed (re)subscribes. So
//! `welcome`, the views of the rooms it follows and the expiry timers stay local and never wait on
//! Redis, yet agree across daemons.
//!
//! What changes from a single daemon:
//!
//! - Ids, timestamps and epochs come from the cluster ([`Chat::cluster_message`]); a message is stored
//!   and sent when it comes back from Redis, on every daemon alike, the sender's included, so every
//!   daemon sees the same order.
//! - Names are de-duplicated cluster-wide by the bridge; [`Chat::cluster_join`] takes the name given.
//! - A room lists members on other daemons by name only (`Room::remote`); they count in `users`,
//!   `welcome` and `GET /rooms`, but only local members are sent anything.
//! - Rate limits and content checks stay on the daemon that received the frame ([`Chat::check_post`],
//!   [`Chat::global_admit`]).
//!
//! While Redis is unreachable the reactor uses the single-daemon methods, after [`Chat::go_local`] gave
//! every room a local epoch, so clients resuming across the outage are told `recovered: false`.

use std::collections::HashSet;
use std::net::IpAddr;

use super::budget::Source;
use super::events::{self, EventFrame, FramePool, Presence};
use super::history::Pushed;
use super::{names, Chat, Joined, MemberId, Micros, Resume, RoomKey};

/// Where a `join` or `leave` event of the cluster happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// On this daemon: the member is (or was) one of our connections, so the room's local presence
    /// already says so; only the event is delivered.
    Here,
    /// On another daemon: the member is added to or removed from the room's remote names.
    Elsewhere,
}

/// A room message as the cluster numbered and timed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterMessage {
    /// The cluster-wide per-room id.
    pub id: u64,
    /// Timestamp given by Redis, µs since the Unix epoch.
    pub at: Micros,
    /// The sender's name.
    pub client: String,
    /// The checked content.
    pub content: String,
}

/// One room in a [`ClusterImage`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomImage {
    /// The cleaned room name.
    pub room: String,
    /// The room's epoch in the cluster.
    pub epoch: String,
    /// The last id the cluster gave out in this epoch (0: none yet).
    pub seq: u64,
    /// Unexpired messages, oldest first.
    pub messages: Vec<ClusterMessage>,
    /// Names of the members connected to other daemons.
    pub remote: Vec<String>,
    /// Ids up to this one may be missing after a Redis failover (0: none).
    pub gap: u64,
}

/// The global channel in a [`ClusterImage`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GlobalImage {
    /// The unexpired messages, oldest first: (timestamp, text).
    pub messages: Vec<(Micros, String)>,
    /// The last sequence number, to skip messages already in `messages`.
    pub seq: u64,
}

/// Part of the cluster's state, read from Redis after subscribing: rooms this daemon follows (an
/// empty `epoch` for a room Redis has nothing of), and the global channel when it is included.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterImage {
    pub rooms: Vec<RoomImage>,
    pub global: Option<GlobalImage>,
}

/// An event for the local members of a room.
#[derive(Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The room whose local members get it.
    pub room: RoomKey,
    /// The event, framed once for every local member.
    pub event: EventFrame,
    /// A member not to send it to (the joiner of its own `join`).
    pub except: Option<MemberId>,
    /// Whether someone joined or left, and who: what `--compat fastapi` tells instead of `event`.
    pub kind: Presence,
    /// The name that joined or left.
    pub name: Box<str>,
}

/// What [`Chat::apply_image`] leaves the reactor to do.
#[derive(Debug, Default)]
pub struct ImageApplied {
    /// `join`/`leave` events for the members that appeared or vanished elsewhere meanwhile.
    pub deliveries: Vec<Delivery>,
    /// `message` events for the local members: messages of the image this replica had not seen
    /// (published while its feed was away: a failover, a slot that moved), oldest first.
    pub missed: Vec<(RoomKey, EventFrame)>,
    /// Expiry timers to arm: (room, due).
    pub arm_rooms: Vec<(RoomKey, Micros)>,
    /// The global expiry timer to arm.
    pub arm_global: Option<Micros>,
}

/// The cleaned room name of an already percent-decoded path segment (`general` when empty).
pub fn clean_room(decoded: &str) -> String {
    names::sanitize_name(decoded, names::DEFAULT_ROOM)
}

/// The cleaned client name of an already percent-decoded path segment (`anonymous` when empty).
pub fn clean_client(decoded: &str) -> String {
    names::sanitize_name(decoded, names::DEFAULT_CLIENT)
}

impl Chat {
    /// Cluster mode: `m`, connected from `ip`, joins `room` (already cleaned) as `name`, the name the
    /// cluster gave it, in epoch `epoch`. `welcome` lists everyone the replica knows of (here and
    /// elsewhere) and its history follows SPEC §4.2 recovery over the cluster's ids, cut as in
    /// [`Chat::join`] (then [`Chat::catch_up`] works on the replica's history the same way).
    /// `join_event` is not for sending: the cluster delivers the `join` to everyone (see
    /// [`Chat::cluster_presence`]).
    #[allow(clippy::too_many_arguments)]
    pub fn cluster_join(
        &mut self,
        room: &str,
        name: &str,
        epoch: &str,
        m: MemberId,
        ip: IpAddr,
        resume: Resume<'_>,
        now: Micros,
    ) -> Joined {
        let bucket = self.new_bucket(now);
        let (key, _) = self.rooms.open(room);
        self.adopt_epoch(key, epoch);
        let room = self.rooms.get_mut(key).expect("bug: room just opened");
        room.remote.retain(|n| **n != *name);
        let name = room
            .presence
            .join_exact(m, name.to_owned(), bucket, ip)
            .name
            .to_string();
        self.welcome(key, name, resume, now)
    }

    /// Cluster mode: a message of `room` came back from Redis. Stores it (unless its id is not newer
    /// than the last one seen, a repeat after an image) and returns the room, the `message` event for
    /// every local member, and `Some(due)` when the room's expiry timer must be armed.
    pub fn cluster_message(
        &mut self,
        room: &str,
        epoch: &str,
        msg: &ClusterMessage,
    ) -> Option<(RoomKey, EventFrame, Option<Micros>)> {
        let (key, _) = self.rooms.open(room);
        self.adopt_epoch(key, epoch);
        let max = self.cfg.history_max;
        let r = self.rooms.get_mut(key).expect("bug: room just opened");
        if msg.id <= r.history.last_id() {
            return None;
        }
        r.history.set_last_id(msg.id);
        let (event, pushed) = store_message(&mut self.frames, r, msg, max);
        let vacant = r.is_vacant();
        let arm = self.account_push(Source::Room(key), &pushed, msg.at);
        if vacant {
            // `--history-max 0` and nobody in the room: nothing to keep.
            self.rooms.free(key);
        }
        Some((key, event, arm))
    }

    /// Cluster mode: `name` joined or left `room`, here or elsewhere. Returns the event for the local
    /// members, if there are any and the event says something new: a repeat (after an image) of a join
    /// or leave already known is dropped.
    pub fn cluster_presence(
        &mut self,
        room: &str,
        epoch: &str,
        kind: Presence,
        name: &str,
        at: Micros,
        origin: Origin,
    ) -> Option<Delivery> {
        let key = match (kind, origin) {
            (Presence::Join, Origin::Elsewhere) => {
                let (key, _) = self.rooms.open(room);
                self.adopt_epoch(key, epoch);
                let r = self.rooms.get_mut(key).expect("bug: room just opened");
                if r.remote.iter().any(|n| **n == *name) {
                    return None;
                }
                r.remote.push(name.into());
                key
            }
            (Presence::Leave, Origin::Elsewhere) => {
                let key = self.rooms.key_of(room)?;
                let r = self.rooms.get_mut(key)?;
                let pos = r.remote.iter().position(|n| **n == *name)?;
                r.remote.remove(pos);
                if r.is_vacant() {
                    self.rooms.free(key);
                    return None;
                }
                key
            }
            (_, Origin::Here) => self.rooms.key_of(room)?,
        };
        let r = self.rooms.get(key)?;
        if r.presence.is_empty() {
            return None;
        }
        let except = match kind {
            Presence::Join => r.presence.member_named(name),
            Presence::Leave => None,
        };
        Some(Delivery {
            room: key,
            event: events::presence(&mut self.frames, kind, &r.name, name, at),
            except,
            kind,
            name: name.into(),
        })
    }

    /// Cluster mode: a global-channel message came back from Redis with sequence number `seq`. Stores it
    /// unless already seen; `Some((frame, arm))` means: send `frame` (the text) to every global member,
    /// and arm the global expiry timer when `arm` is `Some(due)`.
    pub fn cluster_global(
        &mut self,
        seq: u64,
        at: Micros,
        text: &str,
    ) -> Option<(EventFrame, Option<Micros>)> {
        if seq <= self.cluster_global_seq {
            return None;
        }
        self.cluster_global_seq = seq;
        Some(self.global_store(text, at))
    }

    /// Cluster mode: the cluster says `room`'s epoch is `epoch` (after re-registering our members).
    pub fn cluster_epoch(&mut self, room: &str, epoch: &str) {
        if let Some(key) = self.rooms.key_of(room) {
            self.adopt_epoch(key, epoch);
        }
    }

    /// Cluster mode: replaces the replica of the rooms in `image` (and of the global channel, when it
    /// is included) with the image, the cluster's state read after (re)subscribing.
    ///
    /// Every such room's epoch, history and remote names become the image's (a room Redis has nothing
    /// of keeps its epoch and only its local members); messages newer than the last this replica saw
    /// in the same epoch are also for its local members (`missed`). Members that appeared or vanished elsewhere since
    /// the replica last knew are announced to the local members (`deliveries`), timestamped `now`. An
    /// image behind the ids this replica has seen in the same epoch (a failover lost writes) marks the
    /// ids up to them as possibly missing.
    pub fn apply_image(&mut self, image: &ClusterImage, now: Micros) -> ImageApplied {
        let mut out = ImageApplied::default();
        let max = self.cfg.history_max;
        for img in &image.rooms {
            let (key, _) = self.rooms.open(&img.room);
            let r = self.rooms.get_mut(key).expect("bug: room just opened");
            let seen = (*r.epoch == *img.epoch).then(|| r.history.last_id());
            let dropped = r.history.reset(&mut self.frames);
            if !img.epoch.is_empty() {
                r.epoch = img.epoch.as_str().into();
            }
            self.account_removed(dropped);
            let mut arm = None;
            for msg in &img.messages {
                // Every message goes through the budget, so an image larger than it keeps its newest.
                let Some(r) = self.rooms.get_mut(key) else {
                    break;
                };
                let (event, pushed) = store_message(&mut self.frames, r, msg, max);
                if seen.is_some_and(|seen| msg.id > seen) && !r.presence.is_empty() {
                    out.missed.push((key, event));
                }
                arm = arm.or(self.account_push(Source::Room(key), &pushed, now));
            }
            let Some(r) = self.rooms.get_mut(key) else {
                continue;
            };
            let seen = seen.unwrap_or(0);
            r.history.set_last_id(img.seq.max(seen));
            r.history.set_gap(img.gap);
            if seen > img.seq {
                r.history.set_gap(seen);
            }
            // Only when no timer is pending: one armed earlier fires and finds these messages.
            if let Some(due) = arm {
                out.arm_rooms.push((key, due));
            }
            let remote: Vec<Box<str>> = img.remote.iter().map(|n| n.as_str().into()).collect();
            Self::diff_remote(&mut self.frames, r, key, remote, now, &mut out.deliveries);
            if r.is_vacant() {
                self.rooms.free(key);
            }
        }
        if let Some(global) = &image.global {
            let frames = &mut self.frames;
            let dropped = self.global_history.clear(|old| frames.recycle(old));
            self.account_removed(dropped);
            let mut arm_global = None;
            for (at, text) in &global.messages {
                let at = self.global_history.stamp(*at);
                let frame = self.frames.raw(text);
                let frames = &mut self.frames;
                let pushed = self
                    .global_history
                    .push(at, frame, self.cfg.history_max, |old| frames.recycle(old));
                arm_global = arm_global.or(self.account_push(Source::Global, &pushed, now));
            }
            self.cluster_global_seq = global.seq;
            out.arm_global = arm_global;
        }
        out
    }

    /// Cluster mode: this daemon stopped following `room` (its last member here left): the replica
    /// forgets the room's history and remote members.
    pub fn cluster_forget(&mut self, room: &str) {
        let Some(key) = self.rooms.key_of(room) else {
            return;
        };
        let Some(r) = self.rooms.get_mut(key) else {
            return;
        };
        if !r.presence.is_empty() {
            return; // someone joined meanwhile: still followed
        }
        let dropped = r.history.reset(&mut self.frames);
        r.remote.clear();
        self.account_removed(dropped);
        self.rooms.free(key);
    }

    /// Redis is unreachable: every room gets a fresh local epoch, so that ids given out locally from
    /// now on are not confused with the cluster's. Remote names are kept (they are likely still
    /// there) until the next image says otherwise.
    pub fn go_local(&mut self) {
        for key in self.rooms.keys() {
            let epoch = self.rooms.next_epoch();
            if let Some(r) = self.rooms.get_mut(key) {
                r.epoch = epoch;
            }
        }
    }

    /// Gives the room `epoch`; a different epoch than the room had means the sequence started over, so
    /// the history (from the old sequence) is dropped.
    fn adopt_epoch(&mut self, key: RoomKey, epoch: &str) {
        let Some(r) = self.rooms.get_mut(key) else {
            return;
        };
        if *r.epoch != *epoch {
            let dropped = r.history.reset(&mut self.frames);
            r.epoch = epoch.into();
            self.account_removed(dropped);
        }
    }

    /// Replaces `r.remote` with `remote`, announcing the differences to the local members.
    fn diff_remote(
        frames: &mut FramePool,
        r: &mut super::room::Room,
        key: RoomKey,
        remote: Vec<Box<str>>,
        now: Micros,
        out: &mut Vec<Delivery>,
    ) {
        let tell = !r.presence.is_empty();
        if tell {
            let old: HashSet<&str> = r.remote.iter().map(|n| &**n).collect();
            let new: HashSet<&str> = remote.iter().map(|n| &**n).collect();
            for gone in r.remote.iter().filter(|n| !new.contains(&***n)) {
                out.push(Delivery {
                    room: key,
                    event: events::presence(frames, Presence::Leave, &r.name, gone, now),
                    except: None,
                    kind: Presence::Leave,
                    name: gone.clone(),
                });
            }
            for came in remote.iter().filter(|n| !old.contains(&***n)) {
                out.push(Delivery {
                    room: key,
                    event: events::presence(frames, Presence::Join, &r.name, came, now),
                    except: None,
                    kind: Presence::Join,
                    name: came.clone(),
                });
            }
        }
        r.remote = remote;
    }
}

/// Frames `msg`'s `message` event and keeps it in `r`'s history (at most `max`); returns the event,
/// for the local members, and what the push did.
fn store_message(
    frames: &mut FramePool,
    r: &mut super::room::Room,
    msg: &ClusterMessage,
    max: usize,
) -> (EventFrame, Pushed) {
    let event = events::message(frames, msg.id, &r.name, &msg.client, &msg.content, msg.at);
    let at = r.history.timeline.stamp(msg.at);
    let pushed = r.history.keep(at, msg.id, &event, max, frames);
    (event, pushed)
}
