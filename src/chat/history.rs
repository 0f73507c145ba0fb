//! Message histories: order, `--history-max`, expiry at the TTL, ids and `?since=` (SPEC §4.2, §4.4).
//!
//! Owns what is retained and for how long, given `now`. It arms no timer: [`Timeline::push`] says when a
//! history goes from empty to non-empty and [`Timeline::expire`] returns the next due time, and the reactor
//! keeps one timer per non-empty history with that. Event text is built by [`super::events`].

use std::collections::VecDeque;

use super::events::FramePool;
use super::{EventFrame, Micros};

/// What an entry holds in memory, as counted against `--history-max-bytes`.
pub(crate) trait Held {
    /// Bytes counted for this entry.
    fn held_bytes(&self) -> usize;
}

impl Held for EventFrame {
    /// The frame's buffer: what the history really keeps alive, escaped JSON included (a control
    /// character in a room message is six bytes, `\u0001`), and the pool's size class rounding.
    fn held_bytes(&self) -> usize {
        self.buffer_len()
    }
}

/// One retained entry and its arrival time.
#[derive(Debug)]
pub(crate) struct Stamped<T> {
    /// Arrival time; the entry expires at `at + ttl`.
    pub(crate) at: Micros,
    pub(crate) item: T,
}

/// Entries in arrival order, oldest at the front.
///
/// A `VecDeque` because both ends are hot: messages arrive at the back, and expiry (same TTL for
/// all), `--history-max` and `--history-max-bytes` remove from the front, each in O(1).
#[derive(Debug)]
pub(crate) struct Timeline<T> {
    /// INVARIANT: `at` is non-decreasing front to back, so the expired entries are always a prefix and
    /// the live ones can be found by binary search.
    entries: VecDeque<Stamped<T>>,
    /// Entries ever stored here; the next one's ordinal. Entries only leave from the front, so the
    /// front's ordinal is `stored - len`, and an ordinal names an entry that is still here exactly when
    /// it is in `[stored - len, stored)` ([`Timeline::holds`]): the global order of
    /// `--history-max-bytes` refers to entries this way, with no pointer to keep up to date.
    stored: u64,
    /// INVARIANT: the sum of [`Held::held_bytes`] over `entries`.
    bytes: usize,
    /// The reactor holds an expiry timer for this timeline (see [`Pushed::arm`]).
    /// INVARIANT: true whenever `entries` is non-empty. Cleared only by [`Timeline::expire`] when it
    /// empties the timeline, since the reactor drops the timer then; entries removed otherwise
    /// (`--history-max`, `--history-max-bytes`, a reset) leave the timer armed, and when it fires it
    /// finds what is due then. So a timeline never asks for a second timer while one is pending.
    armed: bool,
}

/// Messages and bytes that left a history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Removed {
    pub(crate) messages: usize,
    pub(crate) bytes: usize,
}

impl Removed {
    fn add(&mut self, bytes: usize) {
        self.messages += 1;
        self.bytes += bytes;
    }
}

/// An entry [`Timeline::push`] retained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Kept {
    /// Its ordinal in the timeline (see [`Timeline::holds`]).
    pub(crate) ordinal: u64,
    /// Its [`Held::held_bytes`].
    pub(crate) bytes: usize,
}

/// What [`Timeline::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Pushed {
    /// The arrival time recorded (see [`Timeline::stamp`]).
    pub(crate) at: Micros,
    /// The timeline needs an expiry timer: it holds an entry now and has none armed.
    pub(crate) arm: bool,
    /// Entries dropped from the front to respect `--history-max`.
    pub(crate) dropped: Removed,
    /// The entry itself, when it was retained (not with `--history-max 0`).
    pub(crate) kept: Option<Kept>,
}

/// What [`Timeline::expire`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Expired {
    pub(crate) removed: Removed,
    /// When the oldest remaining entry expires; `None` once the timeline is empty.
    pub(crate) next_due: Option<Micros>,
}

impl<T> Default for Timeline<T> {
    fn default() -> Self {
        Timeline {
            entries: VecDeque::new(),
            stored: 0,
            bytes: 0,
            armed: false,
        }
    }
}

impl<T: Held> Timeline<T> {
    /// Appends `item` at `at` (which must come from [`Timeline::stamp`]) and hands the oldest entries
    /// beyond `max` to `gone`.
    pub(crate) fn push(
        &mut self,
        at: Micros,
        item: T,
        max: usize,
        mut gone: impl FnMut(T),
    ) -> Pushed {
        debug_assert!(at >= self.stamp(0), "bug: timestamp not from stamp()");
        if max == 0 {
            return Pushed {
                at,
                arm: false,
                dropped: Removed::default(),
                kept: None,
            };
        }
        let mut dropped = Removed::default();
        while self.entries.len() >= max {
            if let Some(old) = self.pop_front() {
                dropped.add(old.item.held_bytes());
                gone(old.item);
            }
        }
        let kept = Kept {
            ordinal: self.stored,
            bytes: item.held_bytes(),
        };
        self.stored += 1;
        self.bytes += kept.bytes;
        self.entries.push_back(Stamped { at, item });
        let arm = !std::mem::replace(&mut self.armed, true);
        Pushed {
            at,
            arm,
            dropped,
            kept: Some(kept),
        }
    }

    /// Removes the entries with `at + ttl <= now` (an entry is gone exactly at its expiry, SPEC §4.2),
    /// handing each to `gone`. Called when the timeline's timer fires: when nothing is left, the timer
    /// is not re-armed and the next push asks for one.
    pub(crate) fn expire(&mut self, now: Micros, ttl: Micros, mut gone: impl FnMut(T)) -> Expired {
        let due = self.live_start(now, ttl);
        let mut removed = Removed::default();
        for _ in 0..due {
            if let Some(old) = self.pop_front() {
                removed.add(old.item.held_bytes());
                gone(old.item);
            }
        }
        let next_due = self.entries.front().map(|e| e.at.saturating_add(ttl));
        self.armed = next_due.is_some();
        Expired { removed, next_due }
    }

    /// Removes the oldest entry, whatever its age (`--history-max-bytes`); the timer stays armed.
    pub(crate) fn pop_front(&mut self) -> Option<Stamped<T>> {
        let old = self.entries.pop_front()?;
        self.bytes -= old.item.held_bytes();
        Some(old)
    }

    /// Drops every entry, handing each to `gone`; the timer stays armed (it finds nothing, or what was
    /// pushed since, when it fires).
    pub(crate) fn clear(&mut self, mut gone: impl FnMut(T)) -> Removed {
        let mut removed = Removed::default();
        while let Some(old) = self.pop_front() {
            removed.add(old.item.held_bytes());
            gone(old.item);
        }
        removed
    }
}

impl<T> Timeline<T> {
    /// The arrival time to record for an entry arriving at `now`.
    ///
    /// `now` is wall-clock time, which can step backwards (NTP); clamping to the newest entry's time keeps
    /// the ordering invariant, at the price of a message living slightly longer than its TTL in that case.
    pub(crate) fn stamp(&self, now: Micros) -> Micros {
        self.entries.back().map_or(now, |last| now.max(last.at))
    }

    /// Index of the first entry still alive at `now`: the timer may fire late, but no view may show an
    /// expired entry. O(log n).
    pub(crate) fn live_start(&self, now: Micros, ttl: Micros) -> usize {
        self.entries
            .partition_point(|e| e.at.saturating_add(ttl) <= now)
    }

    /// The entries alive at `now`, oldest first.
    pub(crate) fn live(
        &self,
        now: Micros,
        ttl: Micros,
    ) -> impl DoubleEndedIterator<Item = &Stamped<T>> + ExactSizeIterator + Clone + '_ {
        self.entries.range(self.live_start(now, ttl)..)
    }

    /// Entries from index `start` (see [`Timeline::live_start`]) on.
    pub(crate) fn starting_at(
        &self,
        start: usize,
    ) -> impl Iterator<Item = &Stamped<T>> + Clone + '_ {
        self.entries.range(start.min(self.entries.len())..)
    }

    /// Whether the entry with this ordinal (from [`Kept::ordinal`]) is still here. O(1).
    pub(crate) fn holds(&self, ordinal: u64) -> bool {
        ordinal < self.stored && ordinal >= self.stored - self.entries.len() as u64
    }

    /// The ordinal of the oldest entry, if any.
    pub(crate) fn front_ordinal(&self) -> Option<u64> {
        (!self.entries.is_empty()).then(|| self.stored - self.entries.len() as u64)
    }

    /// Bytes held, as counted by [`Held::held_bytes`].
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries retained, expired or not (the timer decides when they go).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn get(&self, index: usize) -> Option<&Stamped<T>> {
        self.entries.get(index)
    }

    /// First index whose entry satisfies `!pred`, for a predicate that holds on a prefix.
    pub(crate) fn partition_point(&self, pred: impl FnMut(&Stamped<T>) -> bool) -> usize {
        self.entries.partition_point(pred)
    }
}

/// A stored room message: its id and its `message` event, serialised once when it was posted so that
/// `welcome` and `GET /rooms/{room}/messages` splice the text in instead of serialising again.
#[derive(Debug)]
pub(crate) struct RoomMessage {
    pub(crate) id: u64,
    pub(crate) event: EventFrame,
}

impl Held for RoomMessage {
    fn held_bytes(&self) -> usize {
        self.event.held_bytes()
    }
}

/// A room's history plus its id sequence.
#[derive(Debug, Default)]
pub(crate) struct RoomHistory {
    pub(crate) timeline: Timeline<RoomMessage>,
    /// The last id handed out; 0 before the first message. Ids count from 1 within the room's epoch.
    /// INVARIANT: retained ids are consecutive and end at `last_id` (a message is stored the moment its
    /// id is assigned, and entries only leave from the front), unless `--history-max` is 0, or ids up
    /// to `gap` are concerned.
    last_id: u64,
    /// Cluster mode: ids up to this one may be missing from the history without having expired (a
    /// Redis failover lost them), so a client resuming from before it cannot be given all it missed.
    gap: u64,
}

/// The history a (re)joining client gets, and whether it is complete (SPEC §4.2 recovery).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Recovery {
    /// Index into the timeline of the first message to send.
    pub(crate) start: usize,
    pub(crate) recovered: bool,
}

impl RoomHistory {
    /// Assigns the next id (strictly increasing within the epoch).
    pub(crate) fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    /// The last id handed out (or, in a cluster, received); 0 before the first message.
    pub(crate) fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Cluster mode: the sequence is the cluster's, so ids are given, not assigned here. The caller
    /// passes ids in increasing order (older or repeated ones are dropped before this), which keeps the
    /// invariant as long as the cluster's ids are consecutive.
    pub(crate) fn set_last_id(&mut self, id: u64) {
        self.last_id = id;
    }

    /// Cluster mode: ids up to `id` may be missing (see the field).
    pub(crate) fn set_gap(&mut self, id: u64) {
        self.gap = self.gap.max(id);
    }

    /// Keeps `event`, the message with id `id` that arrived at `at` (from [`Timeline::stamp`]), at most
    /// `max` messages; the buffers of those it pushes out go back to `pool`.
    pub(crate) fn keep(
        &mut self,
        at: Micros,
        id: u64,
        event: &EventFrame,
        max: usize,
        pool: &mut FramePool,
    ) -> Pushed {
        let stored = RoomMessage {
            id,
            event: event.clone(),
        };
        self.timeline
            .push(at, stored, max, |old| pool.recycle(old.event))
    }

    /// Drops the messages expired at `now` ([`Timeline::expire`]); their buffers go back to `pool`.
    pub(crate) fn expire(&mut self, now: Micros, ttl: Micros, pool: &mut FramePool) -> Expired {
        self.timeline
            .expire(now, ttl, |old| pool.recycle(old.event))
    }

    /// Forgets every message and starts the id sequence over (a new epoch); returns what was
    /// dropped. The buffers go back to `pool`.
    pub(crate) fn reset(&mut self, pool: &mut FramePool) -> Removed {
        self.last_id = 0;
        self.gap = 0;
        self.timeline.clear(|old| pool.recycle(old.event))
    }

    /// Where the live messages with ids greater than `since` start.
    pub(crate) fn start_after(&self, since: u64, now: Micros, ttl: Micros) -> usize {
        let live = self.timeline.live_start(now, ttl);
        // Ids increase along the timeline, so this is a binary search too.
        let by_id = self.timeline.partition_point(|e| e.item.id <= since);
        live.max(by_id)
    }

    /// Whether some id in `(since, last_id]` is no longer available at `now`, expired or dropped by
    /// `--history-max`: then the client cannot be given everything it missed.
    pub(crate) fn has_gap_after(&self, since: u64, now: Micros, ttl: Micros) -> bool {
        if since >= self.last_id {
            return false; // nothing was said after `since`
        }
        if since < self.gap {
            return true; // lost in a failover, maybe
        }
        let live = self.timeline.live_start(now, ttl);
        // Retained ids are consecutive, so the oldest live id tells whether `since + 1` is still there.
        let oldest_live_id = self
            .timeline
            .get(live)
            .map_or(self.last_id + 1, |e| e.item.id);
        oldest_live_id > since + 1
    }

    /// Applies the recovery table of SPEC §4.2/§4.4 for a join with `since`/`epoch` into a room whose
    /// epoch is `current_epoch`.
    pub(crate) fn recover(
        &self,
        since: Option<u64>,
        epoch: Option<&str>,
        current_epoch: &str,
        now: Micros,
        ttl: Micros,
    ) -> Recovery {
        let whole = self.timeline.live_start(now, ttl);
        match (since, epoch) {
            // Ids from another epoch mean nothing here: the sequence started over. This wins even when
            // `since` is absent (or was not a number): a client that names an epoch had messages from
            // it, and some may be gone.
            (_, Some(e)) if e != current_epoch => Recovery {
                start: whole,
                recovered: false,
            },
            // A plain join asked for nothing, so nothing can be missing.
            (None, _) => Recovery {
                start: whole,
                recovered: true,
            },
            // Same epoch, but the missed messages are partly gone: give all we have and say so.
            (Some(since), Some(_)) if self.has_gap_after(since, now, ttl) => Recovery {
                start: whole,
                recovered: false,
            },
            // Same epoch without a gap, or no epoch (the client trusts the ids): filter by id.
            (Some(since), _) => Recovery {
                start: self.start_after(since, now, ttl),
                recovered: !self.has_gap_after(since, now, ttl),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Micros = 60_000_000;

    fn room_with(ids_at: &[Micros], max: usize) -> RoomHistory {
        let mut h = RoomHistory::default();
        for &at in ids_at {
            let id = h.next_id();
            let at = h.timeline.stamp(at);
            h.timeline.push(
                at,
                RoomMessage {
                    id,
                    event: FramePool::default().raw(&format!("m{id}")),
                },
                max,
                drop,
            );
        }
        h
    }

    fn ids(h: &RoomHistory, start: usize) -> Vec<u64> {
        h.timeline.starting_at(start).map(|e| e.item.id).collect()
    }

    /// Test entries: a unit weighs nothing, a number its value in bytes.
    impl Held for () {
        fn held_bytes(&self) -> usize {
            0
        }
    }

    impl Held for u64 {
        fn held_bytes(&self) -> usize {
            *self as usize
        }
    }

    fn gone(messages: usize, bytes: usize) -> Removed {
        Removed { messages, bytes }
    }

    #[test]
    fn expiry_is_exact_to_the_microsecond() {
        let mut t: Timeline<()> = Timeline::default();
        let p = t.push(1_000, (), 10, drop);
        assert_eq!(
            p,
            Pushed {
                at: 1_000,
                arm: true,
                dropped: Removed::default(),
                kept: Some(Kept {
                    ordinal: 0,
                    bytes: 0
                }),
            }
        );
        assert!(!t.push(2_000, (), 10, drop).arm, "one timer per timeline");
        let due = 1_000 + TTL;
        assert_eq!(t.live(due - 1, TTL).count(), 2);
        assert_eq!(
            t.expire(due - 1, TTL, drop),
            Expired {
                removed: gone(0, 0),
                next_due: Some(due)
            }
        );
        assert_eq!(t.live(due, TTL).count(), 1);
        assert_eq!(
            t.expire(due, TTL, drop),
            Expired {
                removed: gone(1, 0),
                next_due: Some(2_000 + TTL)
            }
        );
        assert_eq!(
            t.expire(u64::MAX, TTL, drop),
            Expired {
                removed: gone(1, 0),
                next_due: None
            }
        );
        assert!(t.is_empty());
        assert!(
            t.push(3_000, (), 10, drop).arm,
            "emptied by its timer: asks again"
        );
    }

    #[test]
    fn history_max_drops_the_oldest() {
        let mut t: Timeline<u64> = Timeline::default();
        for i in 0..3 {
            assert_eq!(t.push(i, i, 3, drop).dropped, Removed::default());
        }
        let p = t.push(3, 3, 3, drop);
        assert_eq!((p.dropped, p.arm), (gone(1, 0), false));
        let kept: Vec<u64> = t.live(0, TTL).map(|e| e.item).collect();
        assert_eq!(kept, [1, 2, 3]);
        // Lowering the cap (never at runtime, but cheap to be right) drops down to it.
        assert_eq!(t.push(4, 4, 2, drop).dropped, gone(2, 3));
        assert_eq!((t.len(), t.bytes()), (2, 7));
    }

    #[test]
    fn history_max_zero_keeps_nothing() {
        let mut t: Timeline<()> = Timeline::default();
        let p = t.push(5, (), 0, drop);
        assert!(p.kept.is_none() && !p.arm);
        assert!(t.is_empty());
    }

    #[test]
    fn bytes_and_ordinals_follow_every_way_out() {
        let mut t: Timeline<u64> = Timeline::default();
        for (i, size) in [10u64, 20, 30, 40].into_iter().enumerate() {
            let p = t.push(i as u64 * 1_000, size, 3, drop);
            assert_eq!(
                p.kept.map(|k| (k.ordinal, k.bytes)),
                Some((i as u64, size as usize))
            );
        }
        // 10 dropped by --history-max 3.
        assert_eq!(t.bytes(), 90);
        assert!(!t.holds(0) && t.holds(1) && t.holds(3) && !t.holds(4));
        assert_eq!(t.front_ordinal(), Some(1));
        let first = t.pop_front().unwrap();
        assert_eq!(
            (first.item, t.bytes(), t.front_ordinal()),
            (20, 70, Some(2))
        );
        assert_eq!(t.expire(2_000 + TTL, TTL, drop).removed, gone(1, 30));
        assert_eq!(t.clear(drop), gone(1, 40));
        assert_eq!((t.bytes(), t.front_ordinal()), (0, None));
        assert!(!t.holds(3));
        // Cleared (a reset): the timer is still pending, so the next push does not ask for another.
        let p = t.push(9_000, 5, 3, drop);
        assert_eq!((p.arm, p.kept.unwrap().ordinal), (false, 4));
    }

    #[test]
    fn clock_stepping_back_keeps_order() {
        let mut t: Timeline<()> = Timeline::default();
        t.push(t.stamp(10_000), (), 10, drop);
        let at = t.stamp(4_000);
        assert_eq!(at, 10_000);
        t.push(at, (), 10, drop);
        assert_eq!(t.expire(10_000 + TTL, TTL, drop).removed, gone(2, 0));
    }

    #[test]
    fn since_filters_by_id() {
        let h = room_with(&[0, 1, 2, 3, 4], 100);
        assert_eq!(ids(&h, h.start_after(0, 10, TTL)), [1, 2, 3, 4, 5]);
        assert_eq!(ids(&h, h.start_after(3, 10, TTL)), [4, 5]);
        assert_eq!(ids(&h, h.start_after(5, 10, TTL)), Vec::<u64>::new());
        assert_eq!(ids(&h, h.start_after(99, 10, TTL)), Vec::<u64>::new());
        // Expired entries are skipped even before the timer removes them.
        assert_eq!(ids(&h, h.start_after(0, 1 + TTL, TTL)), [3, 4, 5]);
        assert_eq!(ids(&h, h.start_after(3, 1 + TTL, TTL)), [4, 5]);
    }

    #[test]
    fn gaps_by_expiry_and_by_history_max() {
        let h = room_with(&[0, 1, 2, 3, 4], 100);
        assert!(!h.has_gap_after(0, 10, TTL));
        assert!(!h.has_gap_after(5, u64::MAX, TTL), "nothing after 5");
        // At 1 + TTL ids 1 and 2 have expired.
        assert!(h.has_gap_after(0, 1 + TTL, TTL));
        assert!(h.has_gap_after(1, 1 + TTL, TTL));
        assert!(!h.has_gap_after(2, 1 + TTL, TTL));
        // Everything expired: any since < 5 has a gap.
        assert!(h.has_gap_after(4, 4 + TTL, TTL));

        let capped = room_with(&[0, 1, 2, 3, 4], 2); // keeps ids 4, 5
        assert!(capped.has_gap_after(2, 10, TTL));
        assert!(!capped.has_gap_after(3, 10, TTL));
    }

    #[test]
    fn recovery_table() {
        let h = room_with(&[0, 1, 2, 3, 4], 100);
        let r = |since, epoch, now| {
            let rec = h.recover(since, epoch, "E", now, TTL);
            (ids(&h, rec.start), rec.recovered)
        };
        let late = 1 + TTL; // ids 1 and 2 expired
        assert_eq!(r(None, None, 10), (vec![1, 2, 3, 4, 5], true));
        assert_eq!(r(None, Some("old"), 10), (vec![1, 2, 3, 4, 5], false));
        assert_eq!(r(None, Some("E"), 10), (vec![1, 2, 3, 4, 5], true));
        assert_eq!(r(None, None, late), (vec![3, 4, 5], true));
        assert_eq!(r(Some(3), None, 10), (vec![4, 5], true));
        assert_eq!(r(Some(1), None, late), (vec![3, 4, 5], false));
        assert_eq!(r(Some(2), None, late), (vec![3, 4, 5], true));
        assert_eq!(r(Some(3), Some("old"), 10), (vec![1, 2, 3, 4, 5], false));
        assert_eq!(r(Some(3), Some("E"), 10), (vec![4, 5], true));
        assert_eq!(r(Some(3), Some("E"), late), (vec![4, 5], true));
        assert_eq!(r(Some(0), Some("E"), late), (vec![3, 4, 5], false));
    }

    #[test]
    fn what_leaves_is_handed_back_oldest_first() {
        let mut t = Timeline::default();
        let mut gone = Vec::new();
        for i in 0..5u64 {
            t.push(t.stamp(i * 1_000), i, 3, |old| gone.push(old));
        }
        assert_eq!(gone, [0, 1], "trimmed by --history-max");
        t.expire(3_000 + TTL, TTL, |old| gone.push(old));
        assert_eq!(gone, [0, 1, 2, 3], "expired");
        assert_eq!(t.len(), 1);
    }
}
