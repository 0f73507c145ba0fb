//! Message histories: order, `--history-max`, expiry at the TTL, ids and `?since=` (SPEC §4.2, §4.4).
//!
//! Owns what is retained and for how long, given `now`. It arms no timer: [`Timeline::push`] says when a
//! history goes from empty to non-empty and [`Timeline::expire`] returns the next due time, and the reactor
//! keeps one timer per non-empty history with that. Event text is built by [`super::events`].

use std::collections::VecDeque;

use super::events::FramePool;
use super::{EventFrame, Micros};

/// One retained entry and its arrival time.
#[derive(Debug)]
pub(crate) struct Stamped<T> {
    /// Arrival time; the entry expires at `at + ttl`.
    pub(crate) at: Micros,
    pub(crate) item: T,
}

/// Entries in arrival order, oldest at the front.
///
/// A `VecDeque` because both ends are hot: messages arrive at the back, and both expiry (same TTL for
/// all) and `--history-max` remove from the front, each in O(1).
#[derive(Debug)]
pub(crate) struct Timeline<T> {
    /// INVARIANT: `at` is non-decreasing front to back, so the expired entries are always a prefix and
    /// the live ones can be found by binary search.
    entries: VecDeque<Stamped<T>>,
}

/// What [`Timeline::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Pushed {
    /// The arrival time recorded (see [`Timeline::stamp`]).
    pub(crate) at: Micros,
    /// The timeline was empty before, so no expiry timer is armed for it yet.
    pub(crate) was_empty: bool,
    /// Entries dropped from the front to respect `--history-max`.
    pub(crate) dropped: usize,
    /// The entry itself was retained (false only with `--history-max 0`).
    pub(crate) stored: bool,
}

/// What [`Timeline::expire`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Expired {
    pub(crate) removed: usize,
    /// When the oldest remaining entry expires; `None` once the timeline is empty.
    pub(crate) next_due: Option<Micros>,
}

impl<T> Default for Timeline<T> {
    fn default() -> Self {
        Timeline {
            entries: VecDeque::new(),
        }
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
        let was_empty = self.entries.is_empty();
        if max == 0 {
            return Pushed {
                at,
                was_empty,
                dropped: 0,
                stored: false,
            };
        }
        let mut dropped = 0;
        while self.entries.len() >= max {
            if let Some(old) = self.entries.pop_front() {
                gone(old.item);
            }
            dropped += 1;
        }
        self.entries.push_back(Stamped { at, item });
        Pushed {
            at,
            was_empty,
            dropped,
            stored: true,
        }
    }

    /// Removes the entries with `at + ttl <= now` (an entry is gone exactly at its expiry, SPEC §4.2),
    /// handing each to `gone`.
    pub(crate) fn expire(&mut self, now: Micros, ttl: Micros, gone: impl FnMut(T)) -> Expired {
        let removed = self.live_start(now, ttl);
        self.entries.drain(..removed).map(|e| e.item).for_each(gone);
        Expired {
            removed,
            next_due: self.entries.front().map(|e| e.at.saturating_add(ttl)),
        }
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
    ) -> impl Iterator<Item = &Stamped<T>> + Clone + '_ {
        self.entries.range(self.live_start(now, ttl)..)
    }

    /// Entries from index `start` (see [`Timeline::live_start`]) on.
    pub(crate) fn starting_at(
        &self,
        start: usize,
    ) -> impl Iterator<Item = &Stamped<T>> + Clone + '_ {
        self.entries.range(start.min(self.entries.len())..)
    }

    /// Drops every entry; returns how many there were.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.entries.len();
        self.entries.clear();
        n
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

/// A room's history plus its id sequence.
#[derive(Debug, Default)]
pub(crate) struct RoomHistory {
    pub(crate) timeline: Timeline<RoomMessage>,
    /// The last id handed out; 0 before the first message. Ids count from 1 within the room's epoch.
    /// INVARIANT: retained ids are consecutive and end at `last_id` (a message is stored the moment its
    /// id is assigned, and entries only leave from the front), unless `--history-max` is 0.
    last_id: u64,
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

    /// Forgets every message and starts the id sequence over (a new epoch); returns the messages
    /// dropped.
    pub(crate) fn reset(&mut self) -> usize {
        self.last_id = 0;
        self.timeline.clear()
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

    #[test]
    fn expiry_is_exact_to_the_microsecond() {
        let mut t: Timeline<()> = Timeline::default();
        let p = t.push(1_000, (), 10, drop);
        assert_eq!(
            p,
            Pushed {
                at: 1_000,
                was_empty: true,
                dropped: 0,
                stored: true
            }
        );
        assert!(!t.push(2_000, (), 10, drop).was_empty);
        let due = 1_000 + TTL;
        assert_eq!(t.live(due - 1, TTL).count(), 2);
        assert_eq!(
            t.expire(due - 1, TTL, drop),
            Expired {
                removed: 0,
                next_due: Some(due)
            }
        );
        assert_eq!(t.live(due, TTL).count(), 1);
        assert_eq!(
            t.expire(due, TTL, drop),
            Expired {
                removed: 1,
                next_due: Some(2_000 + TTL)
            }
        );
        assert_eq!(
            t.expire(u64::MAX, TTL, drop),
            Expired {
                removed: 1,
                next_due: None
            }
        );
        assert!(t.is_empty());
    }

    #[test]
    fn history_max_drops_the_oldest() {
        let mut t: Timeline<u32> = Timeline::default();
        for i in 0..3 {
            assert_eq!(t.push(i.into(), i, 3, drop).dropped, 0);
        }
        let p = t.push(3, 3, 3, drop);
        assert_eq!((p.dropped, p.was_empty), (1, false));
        let kept: Vec<u32> = t.live(0, TTL).map(|e| e.item).collect();
        assert_eq!(kept, [1, 2, 3]);
        // Lowering the cap (never at runtime, but cheap to be right) drops down to it.
        assert_eq!(t.push(4, 4, 2, drop).dropped, 2);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn history_max_zero_keeps_nothing() {
        let mut t: Timeline<()> = Timeline::default();
        let p = t.push(5, (), 0, drop);
        assert!(!p.stored && p.was_empty);
        assert!(t.is_empty());
    }

    #[test]
    fn clock_stepping_back_keeps_order() {
        let mut t: Timeline<()> = Timeline::default();
        t.push(t.stamp(10_000), (), 10, drop);
        let at = t.stamp(4_000);
        assert_eq!(at, 10_000);
        t.push(at, (), 10, drop);
        assert_eq!(t.expire(10_000 + TTL, TTL, drop).removed, 2);
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
