//! Who is connected where: the global channel's members and a room's members with their names.
//!
//! Owns membership, the per-member rate-limit bucket and peer address, and name de-duplication (the text rules are in
//! [`super::names`]). Which connection a [`MemberId`] is, and sending to it, is the reactor's business.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;

use super::ratelimit::TokenBucket;
use super::{names, MemberId};

/// Hashes a [`MemberId`] with a SplitMix64 finaliser instead of SipHash.
///
/// Member ids are chosen by the reactor, not by peers, so there is no flooding attack to defend against,
/// and the lookup is on every message's path. The finaliser spreads the slab index (low bits) over the
/// whole word, which `HashMap` needs: it takes its bucket from the low bits and a tag from the high ones.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only reached if MemberId's Hash changes shape; stay correct, if slower.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }

    fn finish(&self) -> u64 {
        let mut z = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A map keyed by [`MemberId`] with [`IdHasher`].
pub(crate) type IdMap<V> = HashMap<MemberId, V, BuildHasherDefault<IdHasher>>;

/// The members of the global channel `/ws`.
///
/// Order does not matter there (every member gets every message), so leaving is a `swap_remove`: O(1)
/// join and leave however many are connected. Every idle `/ws` connection pays for this structure, so it
/// is kept dense (SPEC §1): 8 bytes in `members`, 16 in `buckets` when rate limiting is on, 17 in `ips`
/// when the per-address limit is on, and 4 in `pos` — where a hash map from id to position cost about
/// 70 bytes a member.
#[derive(Debug, Default)]
pub(crate) struct GlobalPresence {
    /// The fan-out list, handed to the reactor as a slice.
    members: Vec<MemberId>,
    /// Rate-limit buckets, parallel to `members`; empty when rate limiting is off.
    /// INVARIANT: empty, or `buckets.len() == members.len()`.
    buckets: Vec<TokenBucket>,
    /// Peer addresses, parallel to `members`, for `--rate-limit-per-ip`; empty when that is off.
    /// INVARIANT: empty, or `ips.len() == members.len()`.
    ips: Vec<IpAddr>,
    /// Position in `members` by slot: the low 32 bits of a [`MemberId`], which the reactor keeps dense
    /// (its slab index). `NO_POS` where no member has that slot.
    /// INVARIANT: `pos[slot(members[i])] == i` for every `i`.
    pos: Vec<u32>,
}

const NO_POS: u32 = u32::MAX;

fn slot(m: MemberId) -> usize {
    m.0 as u32 as usize
}

impl GlobalPresence {
    /// Adds `m` with its rate-limit bucket and, when the per-address limit is on, its address; a second
    /// join of the same member only replaces its bucket.
    pub(crate) fn join(&mut self, m: MemberId, bucket: Option<TokenBucket>, ip: Option<IpAddr>) {
        let s = slot(m);
        if self.pos.len() <= s {
            self.pos.resize(s + 1, NO_POS);
        }
        if let Some(i) = self.position(m) {
            debug_assert!(false, "bug: {m:?} joined the global channel twice");
            if let (Some(b), Some(old)) = (bucket, self.buckets.get_mut(i)) {
                *old = b;
            }
            return;
        }
        if self.pos[s] != NO_POS {
            // The slot's previous occupant never left: a reactor bug, but not one to corrupt the list for.
            debug_assert!(false, "bug: slot {s} reused while still a member");
            let stale = self.members[self.pos[s] as usize];
            self.leave(stale);
        }
        self.pos[s] = self.members.len() as u32;
        self.members.push(m);
        if let Some(b) = bucket {
            self.buckets.push(b);
        }
        if let Some(ip) = ip {
            self.ips.push(ip);
        }
        debug_assert!(self.buckets.is_empty() || self.buckets.len() == self.members.len());
        debug_assert!(self.ips.is_empty() || self.ips.len() == self.members.len());
    }

    /// Removes `m`; false if it was not a member.
    pub(crate) fn leave(&mut self, m: MemberId) -> bool {
        let Some(i) = self.position(m) else {
            return false;
        };
        self.members.swap_remove(i);
        if !self.buckets.is_empty() {
            self.buckets.swap_remove(i);
        }
        if !self.ips.is_empty() {
            self.ips.swap_remove(i);
        }
        self.pos[slot(m)] = NO_POS;
        if let Some(&moved) = self.members.get(i) {
            self.pos[slot(moved)] = i as u32;
        }
        true
    }

    pub(crate) fn members(&self) -> &[MemberId] {
        &self.members
    }

    /// The bucket of `m` (`None` when rate limiting is off) and its address (`None` when the
    /// per-address limit is off); `None` for a non-member.
    pub(crate) fn limiter_mut(
        &mut self,
        m: MemberId,
    ) -> Option<(Option<&mut TokenBucket>, Option<IpAddr>)> {
        let i = self.position(m)?;
        Some((self.buckets.get_mut(i), self.ips.get(i).copied()))
    }

    /// Where `m` is in `members`, if it is a member (the same slot with another generation is not).
    fn position(&self, m: MemberId) -> Option<usize> {
        let i = *self.pos.get(slot(m))?;
        (i != NO_POS && self.members[i as usize] == m).then_some(i as usize)
    }
}

/// One member of a room.
#[derive(Debug)]
pub(crate) struct RoomMember {
    /// The name in use, after cleaning and de-duplication.
    pub(crate) name: Box<str>,
    /// `None` when rate limiting is off.
    pub(crate) bucket: Option<TokenBucket>,
    /// The peer address, for `--rate-limit-per-ip`.
    pub(crate) ip: IpAddr,
    /// When this member's last `typing` signal was relayed (0: never), to relay at most one per
    /// [`super::TYPING_INTERVAL`].
    pub(crate) typed_at: super::Micros,
    /// The per-browser token of the upgrade URL (`?token=`): a later connection asking for this
    /// member's name with the same token is the same person in another tab.
    pub(crate) token: Option<Box<str>>,
    /// Another tab of a person already here: it shares the name, is not listed in `users`, and
    /// its coming and going tell the room nothing.
    pub(crate) tab: bool,
}

/// The members of one room, in join order.
///
/// Join order is kept (for `room_members` and the `users` list of `welcome`), so leaving shifts the tail
/// of `order` instead of a `swap_remove`. That is O(room size), but so is the `leave` event every
/// remaining member is sent, and shifting a `Vec<u64>` is a `memmove` far cheaper than queueing that
/// event; everything else is an O(1) hash lookup.
#[derive(Debug, Default)]
pub(crate) struct RoomPresence {
    order: Vec<MemberId>,
    /// INVARIANT: the keys of `members` are exactly the elements of `order`.
    members: IdMap<RoomMember>,
    /// INVARIANT: exactly the `name`s in `members`, for de-duplication without a scan. SipHash (the
    /// default) here, unlike [`IdMap`]: names come from peers.
    names: HashSet<Box<str>>,
    /// Suffix pools of the base names that collided, dropped once idle (see [`names::SuffixPool`]).
    suffixes: HashMap<Box<str>, names::SuffixPool>,
    /// Members that are further tabs ([`RoomMember::tab`]), so `len` counts people in O(1).
    tabs: usize,
}

impl RoomPresence {
    /// Adds `m` under `wanted` (already cleaned), de-duplicated, and returns the name it got. O(log k)
    /// for `k` members asking for the same name.
    ///
    /// A member that is already here (a reactor bug) is first removed, so the invariants hold.
    pub(crate) fn join(
        &mut self,
        m: MemberId,
        wanted: String,
        bucket: Option<TokenBucket>,
        ip: IpAddr,
    ) -> &RoomMember {
        if self.members.contains_key(&m) {
            debug_assert!(false, "bug: {m:?} joined the same room twice");
            self.leave(m);
        }
        let name: Box<str> = if self.names.contains(wanted.as_str()) {
            let pool = self
                .suffixes
                .entry(wanted.as_str().into())
                .or_insert_with(names::SuffixPool::new);
            pool.pick(&wanted, |n| self.names.contains(n)).into()
        } else {
            wanted.into()
        };
        self.names.insert(name.clone());
        self.order.push(m);
        self.members.entry(m).or_insert(RoomMember {
            name,
            bucket,
            ip,
            typed_at: 0,
            token: None,
            tab: false,
        })
    }

    /// Adds `m` under `wanted` as [`RoomPresence::join`] does, unless a member called `wanted` is
    /// here with the same `token`: then `m` is another tab of that person, sharing the name (and
    /// the second value is false: nobody new is in the room).
    pub(crate) fn join_with_token(
        &mut self,
        m: MemberId,
        wanted: String,
        token: Option<&str>,
        bucket: Option<TokenBucket>,
        ip: IpAddr,
    ) -> (&RoomMember, bool) {
        let same_person = token.is_some_and(|t| {
            self.member_named(&wanted)
                .is_some_and(|o| self.members[&o].token.as_deref() == Some(t))
        });
        if same_person && !self.members.contains_key(&m) {
            self.order.push(m);
            self.tabs += 1;
            let member = self.members.entry(m).or_insert(RoomMember {
                name: wanted.into(),
                bucket,
                ip,
                typed_at: 0,
                token: token.map(Into::into),
                tab: true,
            });
            return (member, false);
        }
        self.join(m, wanted, bucket, ip);
        let member = self.members.get_mut(&m).expect("bug: member just joined");
        member.token = token.map(Into::into);
        (member, true)
    }

    /// Whether someone called `name` is here.
    pub(crate) fn has_name(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Cluster mode: adds `m` under `name`, already de-duplicated by the cluster. Should the name be in
    /// use here after all (two daemons de-duplicated it apart while Redis was unreachable), it is
    /// de-duplicated again locally, so the invariants hold.
    pub(crate) fn join_exact(
        &mut self,
        m: MemberId,
        name: String,
        bucket: Option<TokenBucket>,
        ip: IpAddr,
    ) -> &RoomMember {
        if self.names.contains(name.as_str()) || self.members.contains_key(&m) {
            return self.join(m, name, bucket, ip);
        }
        let name: Box<str> = name.into();
        self.names.insert(name.clone());
        self.order.push(m);
        self.members.entry(m).or_insert(RoomMember {
            name,
            bucket,
            ip,
            typed_at: 0,
            token: None,
            tab: false,
        })
    }

    /// The name of member `m`, if it is one.
    pub(crate) fn name_of(&self, m: MemberId) -> Option<&str> {
        self.members.get(&m).map(|r| &*r.name)
    }

    /// The local member called `name`, if any. O(room size), like the broadcast it serves.
    pub(crate) fn member_named(&self, name: &str) -> Option<MemberId> {
        if !self.names.contains(name) {
            return None;
        }
        self.order
            .iter()
            .copied()
            .find(|m| &*self.members[m].name == name && !self.members[m].tab)
    }

    /// Removes `m` and returns what it was; `None` if it was not a member. When `m` was a person's
    /// tab, or that person has another tab here (which then takes `m`'s place), the name stays
    /// ([`RoomPresence::has_name`]).
    pub(crate) fn leave(&mut self, m: MemberId) -> Option<RoomMember> {
        let gone = self.members.remove(&m)?;
        let pos = self
            .order
            .iter()
            .position(|&x| x == m)
            .expect("bug: room member missing from the join order");
        self.order.remove(pos);
        if gone.tab {
            self.tabs -= 1;
            return Some(gone);
        }
        let heir = self
            .order
            .iter()
            .copied()
            .find(|o| self.members[o].tab && self.members[o].name == gone.name);
        if let Some(heir) = heir {
            self.members
                .get_mut(&heir)
                .expect("bug: heir is a member")
                .tab = false;
            self.tabs -= 1;
            return Some(gone);
        }
        self.names.remove(&gone.name);
        if let Some((base, n)) = names::split_suffix(&gone.name) {
            if let Some(pool) = self.suffixes.get_mut(base) {
                pool.release(n);
                if pool.is_idle() {
                    self.suffixes.remove(base);
                }
            }
        }
        Some(gone)
    }

    pub(crate) fn get_mut(&mut self, m: MemberId) -> Option<&mut RoomMember> {
        self.members.get_mut(&m)
    }

    /// Members in join order.
    pub(crate) fn members(&self) -> &[MemberId] {
        &self.order
    }

    /// Names in join order, once per person (not per tab); `Clone` so it can be serialised
    /// without collecting.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> + Clone + '_ {
        self.order
            .iter()
            .map(|m| &self.members[m])
            .filter(|r| !r.tab)
            .map(|r| &*r.name)
    }

    /// People here (a person's tabs count once).
    pub(crate) fn len(&self) -> usize {
        self.order.len() - self.tabs
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_global(p: &GlobalPresence) {
        assert_eq!(
            p.pos.iter().filter(|&&i| i != NO_POS).count(),
            p.members.len()
        );
        for (i, m) in p.members.iter().enumerate() {
            assert_eq!(p.pos[slot(*m)] as usize, i);
        }
        assert!(p.buckets.is_empty() || p.buckets.len() == p.members.len());
        assert!(p.ips.is_empty() || p.ips.len() == p.members.len());
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn global_join_leave_keeps_the_index() {
        let mut p = GlobalPresence::default();
        for i in 0..5 {
            p.join(MemberId(i), None, Some(IpAddr::from([10, 0, 0, i as u8])));
        }
        check_global(&p);
        assert!(p.leave(MemberId(1)));
        check_global(&p);
        assert!(p.leave(MemberId(4))); // the last one: nothing moves
        check_global(&p);
        assert!(!p.leave(MemberId(4)));
        let mut left: Vec<u64> = p.members().iter().map(|m| m.0).collect();
        left.sort_unstable();
        assert_eq!(left, [0, 2, 3]);
        for m in [0, 2, 3] {
            let (_, ip) = p.limiter_mut(MemberId(m)).unwrap();
            assert_eq!(
                ip,
                Some(IpAddr::from([10, 0, 0, m as u8])),
                "addresses follow the swaps"
            );
        }
        for m in [0, 2, 3] {
            assert!(p.leave(MemberId(m)));
        }
        check_global(&p);
        assert!(p.members().is_empty());
    }

    #[test]
    fn room_keeps_join_order_and_names() {
        let mut p = RoomPresence::default();
        let name = |p: &mut RoomPresence, m: u64, n: &str| {
            p.join(MemberId(m), n.into(), None, IP).name.to_string()
        };
        assert_eq!(name(&mut p, 1, "alice"), "alice");
        assert_eq!(name(&mut p, 2, "bob"), "bob");
        assert_eq!(name(&mut p, 3, "alice"), "alice#2");
        assert_eq!(name(&mut p, 4, "alice"), "alice#3");
        assert_eq!(p.leave(MemberId(3)).unwrap().name.as_ref(), "alice#2");
        assert!(p.leave(MemberId(3)).is_none());
        assert_eq!(p.members(), [MemberId(1), MemberId(2), MemberId(4)]);
        assert_eq!(name(&mut p, 5, "alice"), "alice#2");
        let names: Vec<&str> = p.names().collect();
        assert_eq!(names, ["alice", "bob", "alice#3", "alice#2"]);
        assert_eq!(p.len(), 4);
        for m in [1, 2, 4, 5] {
            assert!(p.leave(MemberId(m)).is_some());
        }
        assert!(p.is_empty() && p.names.is_empty());
        assert!(p.suffixes.is_empty(), "idle suffix pools are dropped");
    }

    #[test]
    fn id_hasher_spreads_low_bits() {
        use std::hash::BuildHasher;
        let b = BuildHasherDefault::<IdHasher>::default();
        let h: HashSet<u64> = (0..1000u64)
            .map(|i| b.hash_one(MemberId(i)) & 0x3ff)
            .collect();
        // Consecutive ids should land in many different buckets of a 1024-slot table.
        assert!(h.len() > 550, "{}", h.len());
    }
}
