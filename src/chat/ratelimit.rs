//! The per-connection token bucket of `--rate-limit N/SECS` (SPEC §2, §4.3, §4.4).
//!
//! Owns the arithmetic only: the limit itself lives in [`super::ChatConfig`] and is passed to every call, so
//! a bucket is two words per member. Counting refusals and answering with an `error` event is
//! [`super::Chat`]'s job.

use super::time::MICROS_PER_SEC;
use super::{Micros, RateLimit};

/// A bucket of up to `tokens` tokens that refills continuously at `tokens` per `per_secs` seconds.
///
/// Continuous refill (not a reset every window) means no burst of 2N at a window boundary. To stay in
/// integers the level is kept in "token-microseconds": one token is `per_secs * 10^6` units and each
/// elapsed microsecond adds `tokens` units. The arithmetic is done in `u128` and the level kept in a
/// `u64` (two words a member: this is paid by every idle connection); `--rate-limit` caps both numbers at
/// 10^6, so the capacity, at most 10^18, always fits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenBucket {
    /// INVARIANT: `level <= capacity(limit)` for the limit this bucket is used with.
    level: u64,
    /// When `level` was last brought up to date; never moves backwards.
    last: Micros,
}

impl TokenBucket {
    /// A full bucket: a new connection may send a burst of `tokens` messages at once.
    pub(crate) fn full(limit: &RateLimit, now: Micros) -> TokenBucket {
        TokenBucket {
            level: capacity(limit) as u64,
            last: now,
        }
    }

    /// Takes one token if there is one; `false` means the message is over the limit.
    ///
    /// A wall clock that steps backwards refills nothing and punishes no one: `last` stays at the later
    /// time and the elapsed time counts as zero.
    pub(crate) fn try_take(&mut self, limit: &RateLimit, now: Micros) -> bool {
        let elapsed = now.saturating_sub(self.last);
        self.last = self.last.max(now);
        let refill = u128::from(elapsed) * u128::from(limit.tokens);
        let level = (u128::from(self.level) + refill).min(capacity(limit));
        let cost = token_cost(limit);
        let (level, ok) = if level >= cost {
            (level - cost, true)
        } else {
            (level, false)
        };
        self.level = level as u64;
        ok
    }
}

fn token_cost(limit: &RateLimit) -> u128 {
    u128::from(limit.per_secs) * u128::from(MICROS_PER_SEC)
}

/// Capped at `u64::MAX` so the level always fits its field (settings are validated far below that).
fn capacity(limit: &RateLimit) -> u128 {
    (u128::from(limit.tokens) * token_cost(limit)).min(u128::from(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = MICROS_PER_SEC;

    fn limit(tokens: u32, per_secs: u64) -> RateLimit {
        RateLimit { tokens, per_secs }
    }

    #[test]
    fn burst_then_refuse() {
        let l = limit(3, 60);
        let mut b = TokenBucket::full(&l, 1000);
        assert!(b.try_take(&l, 1000));
        assert!(b.try_take(&l, 1000));
        assert!(b.try_take(&l, 1000));
        assert!(!b.try_take(&l, 1000));
        assert!(!b.try_take(&l, 1000));
    }

    #[test]
    fn refills_one_token_per_interval() {
        // 3 per 60 s: one token every 20 s.
        let l = limit(3, 60);
        let t0 = 5 * S;
        let mut b = TokenBucket::full(&l, t0);
        for _ in 0..3 {
            assert!(b.try_take(&l, t0));
        }
        assert!(!b.try_take(&l, t0 + 20 * S - 1), "1 µs short of a token");
        assert!(b.try_take(&l, t0 + 20 * S), "exactly one token");
        assert!(!b.try_take(&l, t0 + 20 * S));
        // A refused attempt costs nothing: the next token is still due 20 s after the last one.
        assert!(b.try_take(&l, t0 + 40 * S));
    }

    #[test]
    fn refill_is_capped_at_the_bucket_size() {
        let l = limit(2, 1);
        let mut b = TokenBucket::full(&l, 0);
        assert!(b.try_take(&l, 0));
        assert!(b.try_take(&l, 0));
        // An hour idle refills only 2 tokens.
        let later = 3600 * S;
        assert!(b.try_take(&l, later));
        assert!(b.try_take(&l, later));
        assert!(!b.try_take(&l, later));
    }

    #[test]
    fn clock_going_back_refills_nothing() {
        let l = limit(1, 10);
        let mut b = TokenBucket::full(&l, 100 * S);
        assert!(b.try_take(&l, 100 * S));
        assert!(!b.try_take(&l, 50 * S));
        assert!(!b.try_take(&l, 109 * S));
        assert!(b.try_take(&l, 110 * S));
    }

    #[test]
    fn largest_accepted_settings_do_not_overflow() {
        // `--rate-limit` refuses more than 10^6 tokens or seconds.
        let l = limit(1_000_000, 1_000_000);
        let mut b = TokenBucket::full(&l, 0);
        for _ in 0..1000 {
            assert!(b.try_take(&l, 0));
        }
        assert!(b.try_take(&l, u64::MAX));
    }
}
