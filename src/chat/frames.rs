//! Where events are framed, and the buffers they are framed into: a reusable `FrameBuf` to write an
//! event in place, and the shared buffers of frames the histories have let go of, reused for the
//! next events of their size class, so a room whose history is full allocates nothing per message.

use std::rc::Rc;

use crate::protocol::frame::{FrameBuf, OpCode, SharedFrame};

use super::events::EventFrame;
use super::Vocabulary;

/// Smallest and largest pooled buffer sizes: 128 B to 4 KiB, in powers of two. Larger frames get a
/// buffer of their own size and are not pooled.
const POOL_MIN_SHIFT: u32 = 7;
const POOL_CLASSES: usize = 6;
const POOL_MAX: usize = 1 << (POOL_MIN_SHIFT as usize + POOL_CLASSES - 1);
/// Free buffers kept per size class; beyond that they are freed. Steady chat needs only a few (one
/// message expires as one arrives); this bounds what a burst of expiries leaves behind (≤ 0.5 MiB).
const POOL_KEEP: usize = 64;
static ZEROS: [u8; POOL_MAX] = [0; POOL_MAX];

/// Where events are framed: a reusable [`FrameBuf`] to write them in, and the buffers of frames the
/// histories have let go of, to copy the next ones into. In a room whose history is full (by
/// `--history-max` or by age) every new message finds the buffer of the one it pushed out, so the
/// broadcast path allocates nothing, per message or per recipient (`tests/alloc_fanout.rs`).
#[derive(Debug, Default)]
pub(crate) struct FramePool {
    buf: FrameBuf,
    free: [Vec<Rc<[u8]>>; POOL_CLASSES],
    /// How the room events written here spell their `timestamp`.
    pub(crate) times: TimeForm,
}

/// How a room event spells its `timestamp`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum TimeForm {
    /// RFC 3339 UTC with microseconds, `2026-11-21T10:00:00.123456Z` (SPEC §4.2).
    #[default]
    Rfc3339,
    /// Python's `datetime.isoformat()`, `2026-11-21T10:00:00.123456+00:00`, as the seed rooms app
    /// writes it (`--compat fastapi`).
    Python,
}

impl From<Vocabulary> for TimeForm {
    fn from(v: Vocabulary) -> TimeForm {
        match v {
            Vocabulary::Wisp => TimeForm::Rfc3339,
            Vocabulary::FastApi => TimeForm::Python,
        }
    }
}

impl FramePool {
    /// Frames `write`'s output (which must be UTF-8 text) and copies it into a shared buffer: a free
    /// one of the right size class, else a new one.
    pub(super) fn build(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> EventFrame {
        let frame = self.buf.build(OpCode::Text, write);
        let len = frame.len();
        let bytes = match size_class(len) {
            Some(class) => {
                let mut bytes = self.free[class]
                    .pop()
                    .unwrap_or_else(|| Rc::from(&ZEROS[..class_size(class)]));
                Rc::get_mut(&mut bytes).expect("bug: a pooled frame buffer is shared")[..len]
                    .copy_from_slice(frame);
                bytes
            }
            None => Rc::from(frame),
        };
        SharedFrame::new(bytes, len)
    }

    /// A text message sent unchanged (the global channel's).
    pub(crate) fn raw(&mut self, text: &str) -> EventFrame {
        self.build(|out| out.extend_from_slice(text.as_bytes()))
    }

    /// Takes back an event the history no longer keeps: if nothing else refers to its buffer any
    /// more (no queue, no backlog), the buffer is kept for a later event of its size.
    pub(crate) fn recycle(&mut self, event: EventFrame) {
        let bytes = event.into_buffer();
        if Rc::strong_count(&bytes) != 1 || Rc::weak_count(&bytes) != 0 {
            return;
        }
        if let Some(class) = size_class(bytes.len()).filter(|&c| class_size(c) == bytes.len()) {
            if self.free[class].len() < POOL_KEEP {
                self.free[class].push(bytes);
            }
        }
    }
}

/// The pool class whose buffers fit `len` bytes, if any.
fn size_class(len: usize) -> Option<usize> {
    if len > POOL_MAX {
        return None;
    }
    let shift = len
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
        .max(POOL_MIN_SHIFT);
    Some((shift - POOL_MIN_SHIFT) as usize)
}

fn class_size(class: usize) -> usize {
    1 << (POOL_MIN_SHIFT as usize + class)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::events::message;

    const AT: u64 = 1_795_255_200_123_456; // 2026-11-21T10:00:00.123456Z

    #[test]
    fn a_recycled_buffer_carries_the_next_event_of_its_size() {
        let mut pool = FramePool::default();
        // 244- and 234-byte frames: both in the 256-byte class.
        let long = message(&mut pool, 1, "r", "a", &"x".repeat(130), AT);
        let ptr = long.frame().as_ptr();
        // Still referenced elsewhere (a queue, a backlog): not taken back.
        let queued = long.clone();
        pool.recycle(long);
        let other = message(&mut pool, 2, "r", "a", "short", AT);
        assert_ne!(other.frame().as_ptr(), ptr);
        // The last reference: reused by the next event of the same class, with nothing of the
        // longer one showing.
        pool.recycle(queued);
        let reused = message(&mut pool, 3, "r", "b", &"y".repeat(120), AT);
        assert_eq!(reused.frame().as_ptr(), ptr);
        assert_eq!(
            reused.text(),
            message(&mut FramePool::default(), 3, "r", "b", &"y".repeat(120), AT).text()
        );
        // A frame too big to pool is not kept.
        let huge = message(&mut pool, 4, "r", "a", &"z".repeat(5000), AT);
        pool.recycle(huge);
        assert!(pool.free.iter().all(Vec::is_empty));
    }

    #[test]
    fn size_classes_fit_and_bound() {
        assert_eq!(size_class(0), Some(0));
        assert_eq!(size_class(128), Some(0));
        assert_eq!(size_class(129), Some(1));
        assert_eq!(size_class(POOL_MAX), Some(POOL_CLASSES - 1));
        assert_eq!(size_class(POOL_MAX + 1), None);
        for len in 0..=POOL_MAX {
            let c = size_class(len).unwrap();
            assert!(class_size(c) >= len && (c == 0 || class_size(c - 1) < len));
        }
    }
}
