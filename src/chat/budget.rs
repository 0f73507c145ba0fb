//! `--history-max-bytes`: the order in which messages leave the one memory budget shared by every
//! history (each room's and the global channel's).
//!
//! Owns the global post order of retained messages, a FIFO of references ([`Order`]). Which message a
//! reference names, whether it is still held, and removing it are [`super::Chat`]'s business: it owns
//! the histories. The FIFO holds no pointer that removals elsewhere (expiry, `--history-max`, a room
//! freed or reset) would have to keep up to date; they leave stale references behind, which are
//! skipped when met at the front and compacted away before the FIFO would grow.

use std::collections::VecDeque;

use super::RoomKey;

/// The history a message is held in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The global channel's.
    Global,
    /// A room's; a stale key (the room was freed) holds nothing.
    Room(RoomKey),
}

/// One retained message, in post order: its history and its ordinal there
/// ([`super::history::Timeline::holds`]).
///
/// 16 bytes: the source is packed into one word (the room key's generation and index, or
/// [`GLOBAL`]), because every retained message has one of these, and `--history-max-bytes` is about
/// what a message costs.
#[derive(Clone, Copy, Debug)]
struct Entry {
    source: u64,
    ordinal: u64,
}

/// The packed [`Source::Global`]: index and generation `u32::MAX`, which no room reaches (a room's
/// index is below the number of rooms ever open at once).
const GLOBAL: u64 = u64::MAX;

fn pack(source: Source) -> u64 {
    match source {
        Source::Global => GLOBAL,
        Source::Room(k) => u64::from(k.generation) << 32 | u64::from(k.index),
    }
}

fn unpack(source: u64) -> Source {
    if source == GLOBAL {
        Source::Global
    } else {
        Source::Room(RoomKey {
            index: source as u32,
            generation: (source >> 32) as u32,
        })
    }
}

/// Every retained message, oldest first, across all histories.
///
/// INVARIANT: the references to one history's messages are in that history's order, since both are
/// appended when a message is stored. So a reference taken from the front that is still held names
/// the oldest message of its history, and removing it keeps every history a suffix of what it was.
#[derive(Debug, Default)]
pub(crate) struct Order {
    fifo: VecDeque<Entry>,
}

impl Order {
    /// Appends a reference to the message just stored with `ordinal` in `source`.
    ///
    /// When the FIFO is full (a push would reallocate), the references to messages no longer held
    /// (`held` says which) are dropped first, and it grows only if that freed less than half of it.
    /// So it stays within about four times the messages held, a compaction is paid for by the pushes
    /// since the last, and once the histories are full a push allocates nothing.
    pub(crate) fn push(
        &mut self,
        source: Source,
        ordinal: u64,
        mut held: impl FnMut(Source, u64) -> bool,
    ) {
        if self.fifo.len() == self.fifo.capacity() {
            self.fifo.retain(|e| held(unpack(e.source), e.ordinal));
        }
        self.fifo.push_back(Entry {
            source: pack(source),
            ordinal,
        });
    }

    /// The oldest reference, held or not.
    pub(crate) fn pop_front(&mut self) -> Option<(Source, u64)> {
        self.fifo.pop_front().map(|e| (unpack(e.source), e.ordinal))
    }

    /// References kept, stale ones included.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.fifo.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_round_trip() {
        for source in [
            Source::Global,
            Source::Room(RoomKey {
                index: 0,
                generation: 0,
            }),
            Source::Room(RoomKey {
                index: 7,
                generation: u32::MAX,
            }),
            Source::Room(RoomKey {
                index: u32::MAX - 1,
                generation: 3,
            }),
        ] {
            assert_eq!(unpack(pack(source)), source);
        }
        assert_eq!(std::mem::size_of::<Entry>(), 16);
    }

    #[test]
    fn stale_references_are_compacted_before_growing() {
        let mut order = Order::default();
        // One message held for good, then many that leave at once (a busy room's history-max).
        order.push(Source::Global, 0, |_, _| true);
        let room = Source::Room(RoomKey {
            index: 1,
            generation: 0,
        });
        let mut cap = 0;
        for ordinal in 0..10_000 {
            // Only the global message and the last few room messages are held.
            order.push(room, ordinal, |s, o| s == Source::Global || o + 4 > ordinal);
            if ordinal == 100 {
                cap = order.fifo.capacity();
            }
        }
        assert_eq!(order.fifo.capacity(), cap, "no growth once steady");
        assert!(order.len() <= cap);
        assert_eq!(order.pop_front(), Some((Source::Global, 0)));
    }
}
