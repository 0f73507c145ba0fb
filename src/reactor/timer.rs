//! The one timer wheel: every deadline of the daemon (handshake, ping, idle,
//! close, message expiry) is an entry here.
//!
//! A hashed wheel of [`SLOTS`] slots of [`TICK`] each. Inserting is O(1);
//! advancing visits only the slots whose time has come. An entry further
//! out than one turn of the wheel waits in its slot until its tick arrives.
//! The wheel does not know what a deadline means: it hands back the `T`s
//! that are due, and the reactor decides (a connection's entry may be stale,
//! which the reactor detects by comparing the due tick with the one it
//! recorded).

use std::time::{Duration, Instant};

/// Resolution of every deadline. Expiry promises "within one second"; 100 ms
/// keeps the wheel's turns cheap while staying well inside that.
pub const TICK: Duration = Duration::from_millis(100);

/// 1024 slots × 100 ms: deadlines up to ~102 s away land directly in their slot.
const SLOTS: usize = 1024;

/// A point in time, in ticks since the wheel was made.
pub type Tick = u64;

/// 32-bit due ticks (13 years of 100 ms) keep an entry at two words with an 8-byte `T`.
struct Entry<T> {
    due: u32,
    what: T,
}

/// A hashed timing wheel.
pub struct Wheel<T> {
    start: Instant,
    /// The last tick processed by [`Wheel::advance`]; every entry due at or before it has fired.
    now: Tick,
    slots: Vec<Vec<Entry<T>>>,
    len: usize,
    /// Reused between advances so a turn allocates nothing.
    scratch: Vec<Entry<T>>,
}

impl<T> Wheel<T> {
    /// An empty wheel whose tick 0 is `start`.
    pub fn new(start: Instant) -> Wheel<T> {
        Wheel {
            start,
            now: 0,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            len: 0,
            scratch: Vec::new(),
        }
    }

    /// The tick that `at` falls in.
    pub fn tick_of(&self, at: Instant) -> Tick {
        (at.saturating_duration_since(self.start).as_millis() / TICK.as_millis()) as Tick
    }

    /// The first tick at or after `now + after`: a deadline never fires early.
    pub fn tick_after(&self, now: Instant, after: Duration) -> Tick {
        let ms = (now + after)
            .saturating_duration_since(self.start)
            .as_millis();
        ms.div_ceil(TICK.as_millis()) as Tick
    }

    /// Schedules `what` at tick `due` (in the past: fires on the next advance).
    pub fn insert(&mut self, due: Tick, what: T) {
        let due = due.max(self.now + 1);
        self.slots[(due as usize) % SLOTS].push(Entry {
            due: due as u32,
            what,
        });
        self.len += 1;
    }

    /// Entries scheduled (stale ones included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How long the poller may sleep: until the next tick whose slot holds
    /// entries (an entry a full turn away wakes the loop early, harmlessly),
    /// and at most one second, so an idle daemon wakes once a second rather
    /// than every tick.
    pub fn timeout(&self, now: Instant) -> Duration {
        const MAX_SLEEP_TICKS: u64 = 10;
        let ahead = (1..=MAX_SLEEP_TICKS)
            .find(|k| !self.slots[((self.now + k) as usize) % SLOTS].is_empty())
            .unwrap_or(MAX_SLEEP_TICKS);
        let next = self.start + TICK * (self.now + ahead) as u32;
        next.saturating_duration_since(now)
    }

    /// Moves the wheel to `now`, passing every entry now due to `fire`.
    pub fn advance(&mut self, now: Instant, mut fire: impl FnMut(Tick, T)) {
        let target = self.tick_of(now);
        while self.now < target {
            self.now += 1;
            let slot = (self.now as usize) % SLOTS;
            if self.slots[slot].is_empty() {
                continue;
            }
            std::mem::swap(&mut self.slots[slot], &mut self.scratch);
            let tick = self.now;
            for e in self.scratch.drain(..) {
                if e.due as Tick <= tick {
                    self.len -= 1;
                    fire(e.due as Tick, e.what);
                } else {
                    self.slots[slot].push(e);
                }
            }
            // A burst (every connection's deadline in one slot) must not
            // stay resident in the scratch vector once it has fired.
            if self.scratch.capacity() > 4096 {
                self.scratch = Vec::new();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_at_the_right_tick_never_early() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        let due = w.tick_after(t0, Duration::from_millis(250));
        w.insert(due, "a");
        w.insert(w.tick_after(t0, Duration::from_secs(150)), "far");
        let mut fired = Vec::new();
        w.advance(t0 + Duration::from_millis(200), |_, x| fired.push(x));
        assert!(fired.is_empty());
        w.advance(t0 + Duration::from_millis(300), |_, x| fired.push(x));
        assert_eq!(fired, ["a"]);
        // One full turn later the far entry is still waiting (it is 1.5 turns out).
        w.advance(t0 + Duration::from_secs(103), |_, x| fired.push(x));
        assert_eq!(fired, ["a"]);
        w.advance(t0 + Duration::from_secs(150), |_, x| fired.push(x));
        assert_eq!(fired, ["a", "far"]);
        assert!(w.is_empty());
    }

    #[test]
    fn past_deadlines_fire_on_next_advance() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        w.advance(t0 + Duration::from_secs(1), |_, _: u32| {});
        w.insert(0, 7);
        let mut fired = Vec::new();
        w.advance(t0 + Duration::from_millis(1100), |_, x| fired.push(x));
        assert_eq!(fired, [7]);
    }

    #[test]
    fn many_entries_same_slot() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        for i in 0..10_000u32 {
            w.insert(5 + (i % 3) as u64 * SLOTS as u64, i);
        }
        let mut n = 0;
        w.advance(t0 + Duration::from_secs(1), |_, _| n += 1);
        assert_eq!(n, 3334);
        assert_eq!(w.len(), 10_000 - 3334);
    }
}
