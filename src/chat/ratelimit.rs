//! The token buckets of `--rate-limit N/SECS` and `--rate-limit-per-ip N/SECS` (SPEC §2, §4.3, §4.4).
//!
//! Owns the arithmetic, the rule that a message needs a token from both buckets (its connection's and
//! its peer address's), the rule that a bucket answers with at most one `error` per refill, and the
//! map of address buckets. The limits live in [`super::ChatConfig`] and are passed to every call, so a
//! connection's bucket is two words. Counting refusals and writing the `error` event is
//! [`super::Chat`]'s job.

use std::collections::HashMap;
use std::net::IpAddr;

use super::time::MICROS_PER_SEC;
use super::{Micros, RateLimit};

/// The top bit of [`TokenBucket::state`]: an `error` was sent for this bucket since it last admitted a
/// message.
const TOLD: u64 = 1 << 63;

/// A bucket of up to `tokens` tokens that refills continuously at `tokens` per `per_secs` seconds.
///
/// Continuous refill (not a reset every window) means no burst of 2N at a window boundary. To stay in
/// integers the level is kept in "token-microseconds": one token is `per_secs * 10^6` units and each
/// elapsed microsecond adds `tokens` units. The arithmetic is done in `u128` and the level kept in a
/// `u64` (two words a member: this is paid by every idle connection); `--rate-limit` caps both numbers at
/// 10^6, so the capacity, at most 10^18, fits in 63 bits and the top bit is free for [`TOLD`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenBucket {
    /// The level, and [`TOLD`] in the top bit.
    /// INVARIANT: `state & !TOLD <= capacity(limit)` for the limit this bucket is used with.
    state: u64,
    /// When the level was last brought up to date; never moves backwards.
    last: Micros,
}

impl TokenBucket {
    /// A full bucket: a new connection may send a burst of `tokens` messages at once.
    pub(crate) fn full(limit: &RateLimit, now: Micros) -> TokenBucket {
        TokenBucket {
            state: capacity(limit) as u64,
            last: now,
        }
    }

    /// Brings the level up to date at `now` and says whether it holds a token.
    ///
    /// A wall clock that steps backwards refills nothing and punishes no one: `last` stays at the later
    /// time and the elapsed time counts as zero.
    pub(crate) fn has_token(&mut self, limit: &RateLimit, now: Micros) -> bool {
        let level = self.level_at(limit, now);
        self.last = self.last.max(now);
        self.state = (self.state & TOLD) | level as u64;
        level >= token_cost(limit)
    }

    /// Takes the token [`TokenBucket::has_token`] just found; the bucket admits a message, so it may
    /// answer with an `error` again the next time it refuses one.
    pub(crate) fn take(&mut self, limit: &RateLimit) {
        let level = u128::from(self.state & !TOLD);
        debug_assert!(level >= token_cost(limit), "bug: take without a token");
        self.state = level.saturating_sub(token_cost(limit)) as u64;
    }

    /// Takes one token if there is one; `false` means the message is over the limit.
    pub(crate) fn try_take(&mut self, limit: &RateLimit, now: Micros) -> bool {
        let ok = self.has_token(limit, now);
        if ok {
            self.take(limit);
        }
        ok
    }

    /// The bucket refused a message: true the first time since it last admitted one (send the
    /// `error`), false after that (drop the message silently). So a flood of refused messages costs at
    /// most one `error` event per token refilled, instead of one per message.
    pub(crate) fn first_refusal(&mut self) -> bool {
        let first = self.state & TOLD == 0;
        self.state |= TOLD;
        first
    }

    /// Whether the bucket would be full at `now`: then it is the same as a new one, and may be
    /// forgotten.
    fn is_full(&self, limit: &RateLimit, now: Micros) -> bool {
        self.level_at(limit, now) >= capacity(limit)
    }

    fn level_at(&self, limit: &RateLimit, now: Micros) -> u128 {
        let elapsed = now.saturating_sub(self.last);
        let refill = u128::from(elapsed) * u128::from(limit.tokens);
        (u128::from(self.state & !TOLD) + refill).min(capacity(limit))
    }
}

fn token_cost(limit: &RateLimit) -> u128 {
    u128::from(limit.per_secs) * u128::from(MICROS_PER_SEC)
}

/// Capped below [`TOLD`] so the level always fits its 63 bits (settings are validated far below that).
fn capacity(limit: &RateLimit) -> u128 {
    (u128::from(limit.tokens) * token_cost(limit)).min(u128::from(TOLD - 1))
}

/// Which bucket refused a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    /// The connection's own (`--rate-limit`).
    Connection,
    /// The one shared by every connection from the sender's address (`--rate-limit-per-ip`).
    Address,
}

/// What [`admit`] decided about one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Both buckets had a token; one was taken from each.
    Admit,
    /// Over a limit: the message is dropped and nothing was taken.
    Refuse {
        by: Limit,
        /// Send the sender a `rate_limited` error: the first refusal since `by` last admitted one.
        tell: bool,
    },
}

/// The buckets of `--rate-limit-per-ip`, one per peer address that sent a message recently, so that
/// reconnecting does not refill a client's budget.
///
/// A bucket that has refilled completely is the same as a new one, so it is forgotten: [`admit`]
/// sweeps the map at most once per window, and a bucket is full at the latest one window after its
/// last message. The map therefore holds the addresses that sent something in about the last two
/// windows, whatever the number of addresses seen since the start.
#[derive(Debug)]
pub(crate) struct AddressBuckets {
    /// `None` when the limit is off (then the map stays empty).
    limit: Option<RateLimit>,
    /// SipHash (the default): addresses are chosen by peers.
    buckets: HashMap<IpAddr, TokenBucket>,
    /// When [`AddressBuckets::sweep`] next looks at the map.
    next_sweep: Micros,
}

impl AddressBuckets {
    pub(crate) fn new(limit: Option<RateLimit>) -> AddressBuckets {
        AddressBuckets {
            limit: limit.filter(|l| l.tokens > 0 && l.per_secs > 0),
            buckets: HashMap::new(),
            next_sweep: 0,
        }
    }

    pub(crate) fn limit(&self) -> Option<&RateLimit> {
        self.limit.as_ref()
    }

    /// Forgets the buckets that are full at `now`, if a window has passed since the last sweep. O(1)
    /// when not due; O(addresses) once per window.
    pub(crate) fn sweep(&mut self, now: Micros) {
        let Some(limit) = self.limit else {
            return;
        };
        if now < self.next_sweep {
            return;
        }
        self.buckets.retain(|_, b| !b.is_full(&limit, now));
        self.next_sweep = now.saturating_add(limit.per_secs.saturating_mul(MICROS_PER_SEC));
    }

    /// Takes one token from `ip`'s bucket (a fresh, full one for a new address); false when it has
    /// none (or true always, when the limit is off).
    pub(crate) fn try_take(&mut self, ip: IpAddr, now: Micros) -> bool {
        self.sweep(now);
        let Some(limit) = self.limit else {
            return true;
        };
        self.buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::full(&limit, now))
            .try_take(&limit, now)
    }

    /// Addresses with a bucket now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// The rate-limit decision for one message: a token from the sender's connection bucket (`conn`, with
/// its limit; `None` when that limit is off) and one from the bucket of its address `ip` (`None` when
/// the address limit is off or not known). Tokens are taken only when both have one, so a message
/// refused by one bucket costs nothing in the other.
pub(crate) fn admit(
    conn: Option<(&mut TokenBucket, &RateLimit)>,
    addresses: &mut AddressBuckets,
    ip: Option<IpAddr>,
    now: Micros,
) -> Verdict {
    addresses.sweep(now);
    let mut conn = conn;
    if let Some((bucket, limit)) = conn.as_mut() {
        if !bucket.has_token(limit, now) {
            return Verdict::Refuse {
                by: Limit::Connection,
                tell: bucket.first_refusal(),
            };
        }
    }
    if let (Some(limit), Some(ip)) = (addresses.limit, ip) {
        let bucket = addresses
            .buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::full(&limit, now));
        if !bucket.has_token(&limit, now) {
            return Verdict::Refuse {
                by: Limit::Address,
                tell: bucket.first_refusal(),
            };
        }
        bucket.take(&limit);
    }
    if let Some((bucket, limit)) = conn {
        bucket.take(limit);
    }
    Verdict::Admit
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
    fn one_refusal_is_told_per_refill() {
        let l = limit(1, 10);
        let mut b = TokenBucket::full(&l, 0);
        assert!(b.try_take(&l, 0));
        assert!(!b.try_take(&l, 1));
        assert!(b.first_refusal(), "the first refusal is told");
        for t in 2..100 {
            assert!(!b.try_take(&l, t));
            assert!(!b.first_refusal(), "later ones are not");
        }
        // The told flag is not part of the level: the token still comes exactly on time.
        assert!(!b.try_take(&l, 10 * S - 1));
        assert!(b.try_take(&l, 10 * S));
        assert!(!b.try_take(&l, 10 * S));
        assert!(b.first_refusal(), "admitting a message re-arms the error");
    }

    #[test]
    fn a_message_needs_both_tokens_and_a_refusal_costs_neither() {
        let conn_limit = limit(2, 60);
        let mut addresses = AddressBuckets::new(Some(limit(3, 60)));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut a = TokenBucket::full(&conn_limit, 0);
        let mut b = TokenBucket::full(&conn_limit, 0);
        let mut send = |bucket: &mut TokenBucket| {
            admit(Some((bucket, &conn_limit)), &mut addresses, Some(ip), 0)
        };
        assert_eq!(send(&mut a), Verdict::Admit);
        assert_eq!(send(&mut a), Verdict::Admit);
        let by_conn = Verdict::Refuse {
            by: Limit::Connection,
            tell: true,
        };
        assert_eq!(send(&mut a), by_conn);
        // The refusal took no address token: b gets the third.
        assert_eq!(send(&mut b), Verdict::Admit);
        let by_addr = |tell| Verdict::Refuse {
            by: Limit::Address,
            tell,
        };
        assert_eq!(send(&mut b), by_addr(true));
        assert_eq!(send(&mut b), by_addr(false), "one error per refill");
        // b's own bucket lost nothing to the address refusals: one token left.
        assert!(b.try_take(&conn_limit, 0));
        assert!(!b.try_take(&conn_limit, 0));
    }

    #[test]
    fn full_address_buckets_are_forgotten() {
        let l = limit(2, 10);
        let mut addresses = AddressBuckets::new(Some(l));
        for i in 0..100u8 {
            let ip = IpAddr::from([10, 0, 0, i]);
            assert_eq!(admit(None, &mut addresses, Some(ip), S), Verdict::Admit);
        }
        assert_eq!(addresses.len(), 100);
        // Full again from 6 s on, but a sweep is not due before a window has passed since the last.
        addresses.sweep(6 * S);
        assert_eq!(addresses.len(), 100);
        // One address keeps talking; the others' buckets are full again by 11 s.
        let busy = IpAddr::from([10, 0, 0, 7]);
        assert_eq!(
            admit(None, &mut addresses, Some(busy), 11 * S),
            Verdict::Admit
        );
        assert_eq!(addresses.len(), 1);
        assert_eq!(
            admit(None, &mut addresses, Some(busy), 11 * S),
            Verdict::Admit
        );
        let refused = admit(None, &mut addresses, Some(busy), 11 * S);
        assert_eq!(
            refused,
            Verdict::Refuse {
                by: Limit::Address,
                tell: true
            }
        );
        // No address, or the limit off: nothing is kept.
        let mut off = AddressBuckets::new(None);
        assert_eq!(admit(None, &mut off, Some(busy), 0), Verdict::Admit);
        assert_eq!(admit(None, &mut addresses, None, 11 * S), Verdict::Admit);
        assert_eq!(off.len(), 0);
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
