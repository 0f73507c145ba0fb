//! The global channel `/ws` (SPEC §4.1): members, the rate limit, and its history of texts kept
//! exactly as received.

use std::net::IpAddr;

use super::ratelimit::{self, Verdict};
use super::{Chat, EventFrame, GlobalPost, MemberId, Micros, Source};

impl Chat {
    /// Adds `m`, connected from `ip`, to the global channel, with a full rate-limit bucket.
    pub fn global_join(&mut self, m: MemberId, ip: IpAddr, now: Micros) {
        let bucket = self.new_bucket(now);
        let ip = self.addresses.limit().map(|_| ip);
        self.global_members.join(m, bucket, ip);
    }

    /// Removes `m` from the global channel (no-op for a non-member). O(1).
    pub fn global_leave(&mut self, m: MemberId) {
        self.global_members.leave(m);
    }

    /// A text message from `m` on the global channel.
    ///
    /// Applies `m`'s rate limits, then stores `text` with its arrival time in the global history (at
    /// most `history_max`, oldest dropped; and within `history_max_bytes`). The caller sends `text`
    /// itself, unchanged, to every [`Chat::global_members`]. A sender that is not a global member is
    /// not rate limited (it has no bucket); the reactor should not let that happen.
    pub fn global_post(&mut self, m: MemberId, text: &str, now: Micros) -> GlobalPost {
        match self.global_admit(m, now) {
            Ok(()) => {
                let (frame, arm_expiry) = self.global_store(text, now);
                GlobalPost::Broadcast { frame, arm_expiry }
            }
            Err(Some(error)) => GlobalPost::RateLimited { error },
            Err(None) => GlobalPost::Dropped,
        }
    }

    /// The rate limit half of [`Chat::global_post`]: takes a token from `m`'s bucket and from its
    /// address's. `Err(Some(error))`: refused, send `error` to `m`; `Err(None)`: refused, and `m` was
    /// already told (drop it silently).
    pub fn global_admit(&mut self, m: MemberId, now: Micros) -> Result<(), Option<String>> {
        let Some((bucket, ip)) = self.global_members.limiter_mut(m) else {
            return Ok(());
        };
        let conn = bucket.zip(self.cfg.rate_limit.as_ref());
        match ratelimit::admit(conn, &mut self.addresses, ip, now) {
            Verdict::Admit => Ok(()),
            Verdict::Refuse { by, tell } => Err(self.refused(by, tell, now)),
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
        (frame, self.account_push(Source::Global, &pushed, now))
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
        self.account_expiry(expired.removed, now);
        expired.next_due
    }
}
