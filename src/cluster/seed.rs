//! Where node ids and fresh room epochs come from: a small generator seeded by the start time and
//! the pid, so that two nodes, or two lives of one node, are unlikely to pick the same.

use std::time::{SystemTime, UNIX_EPOCH};

/// SplitMix64 over the start time, the pid and a counter: node ids and fresh epochs.
pub(super) struct Seed(u64);

impl Seed {
    pub(super) fn new() -> Seed {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Seed(t ^ (u64::from(std::process::id()) << 32))
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(super) fn epoch(&mut self) -> String {
        format!("{:016x}", self.next())
    }
}
