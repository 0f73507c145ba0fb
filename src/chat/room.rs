//! Rooms and their lifetime: a slab of rooms with generations, found by name, each with an epoch.
//!
//! Owns creating a room on first use, freeing it when nobody is in it and nothing is retained, and
//! giving a reused slot (or a restarted daemon) a new epoch so that clients notice that ids started over
//! (SPEC §4.2, §4.4). Members live in [`super::presence`], messages in [`super::history`].

use std::collections::HashMap;

use super::history::RoomHistory;
use super::presence::RoomPresence;
use super::RoomKey;

/// One live room.
#[derive(Debug)]
pub(crate) struct Room {
    /// The cleaned room name, `room_id` in events.
    pub(crate) name: Box<str>,
    /// Changes whenever the id sequence starts over (a new room, or a restarted daemon).
    pub(crate) epoch: Box<str>,
    pub(crate) presence: RoomPresence,
    pub(crate) history: RoomHistory,
    /// Cluster mode: names of the members connected to other daemons, in the order this daemon learnt
    /// of them (see [`super::replica`]). Always empty on a single daemon.
    pub(crate) remote: Vec<Box<str>>,
}

impl Room {
    /// Nobody in it (here or, in a cluster, elsewhere) and nothing retained: nothing would be lost by
    /// forgetting it.
    pub(crate) fn is_vacant(&self) -> bool {
        self.presence.is_empty() && self.remote.is_empty() && self.history.timeline.is_empty()
    }

    /// Everyone in the room: local members in join order, then members on other daemons.
    pub(crate) fn users(&self) -> impl Iterator<Item = &str> + Clone + '_ {
        self.presence
            .names()
            .chain(self.remote.iter().map(|n| &**n))
    }

    /// Number of [`Room::users`].
    pub(crate) fn user_count(&self) -> usize {
        self.presence.len() + self.remote.len()
    }
}

#[derive(Debug)]
struct Slot {
    /// Bumped each time the slot is freed, so a [`RoomKey`] kept past its room's end (in a timer entry,
    /// say) is recognised as stale instead of reaching whichever room reuses the slot.
    generation: u32,
    room: Option<Room>,
}

/// All live rooms.
///
/// A `Vec` of slots with a free list instead of a `HashMap<String, Room>`: the reactor holds a
/// [`RoomKey`] per connection and per timer, and resolving it is an index plus a generation check, with
/// no hashing of the name on every message.
#[derive(Debug)]
pub(crate) struct Rooms {
    slots: Vec<Slot>,
    /// Indices of empty slots, reused last-freed first (warm in cache).
    free: Vec<u32>,
    /// INVARIANT: maps the name of every live room to its slot index, and nothing else.
    by_name: HashMap<Box<str>, u32>,
    live: usize,
    /// Daemon-wide input to every epoch; see [`Rooms::next_epoch`].
    epoch_seed: u64,
    /// Rooms created so far; makes every epoch of this daemon distinct.
    created: u64,
}

impl Rooms {
    pub(crate) fn new(epoch_seed: u64) -> Rooms {
        Rooms {
            slots: Vec::new(),
            free: Vec::new(),
            by_name: HashMap::new(),
            live: 0,
            epoch_seed,
            created: 0,
        }
    }

    /// The live room `key` points to; `None` for a stale key.
    pub(crate) fn get(&self, key: RoomKey) -> Option<&Room> {
        let slot = self.slots.get(key.index as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        slot.room.as_ref()
    }

    pub(crate) fn get_mut(&mut self, key: RoomKey) -> Option<&mut Room> {
        let slot = self.slots.get_mut(key.index as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        slot.room.as_mut()
    }

    /// The live room called `name`, if any.
    pub(crate) fn find(&self, name: &str) -> Option<&Room> {
        let &index = self.by_name.get(name)?;
        self.slots[index as usize].room.as_ref()
    }

    /// The room called `name` (already cleaned), created with a new epoch if there is none.
    pub(crate) fn open(&mut self, name: &str) -> (RoomKey, &mut Room) {
        let index = match self.by_name.get(name) {
            Some(&index) => index,
            None => self.create(name),
        };
        let slot = &mut self.slots[index as usize];
        let key = RoomKey {
            index,
            generation: slot.generation,
        };
        let room = slot
            .room
            .as_mut()
            .expect("bug: by_name points to a free slot");
        (key, room)
    }

    fn create(&mut self, name: &str) -> u32 {
        let room = Room {
            name: name.into(),
            epoch: self.next_epoch(),
            presence: RoomPresence::default(),
            history: RoomHistory::default(),
            remote: Vec::new(),
        };
        let index = match self.free.pop() {
            Some(index) => {
                let slot = &mut self.slots[index as usize];
                debug_assert!(slot.room.is_none(), "bug: free list holds a live slot");
                slot.room = Some(room);
                index
            }
            None => {
                let index = u32::try_from(self.slots.len()).expect("bug: over 4 billion rooms");
                self.slots.push(Slot {
                    generation: 0,
                    room: Some(room),
                });
                index
            }
        };
        self.by_name.insert(name.into(), index);
        self.live += 1;
        index
    }

    /// Forgets the room `key` points to; its key, and any copy of it, is stale from now on.
    pub(crate) fn free(&mut self, key: RoomKey) {
        let Some(slot) = self.slots.get_mut(key.index as usize) else {
            return;
        };
        if slot.generation != key.generation {
            return;
        }
        let Some(room) = slot.room.take() else {
            return;
        };
        // Wrapping after 2^32 reuses of one slot could make a very old key valid again; a key that old
        // would have to sit in a timer for that long, which no timer here does.
        slot.generation = slot.generation.wrapping_add(1);
        self.by_name.remove(&room.name);
        self.free.push(key.index);
        self.live -= 1;
    }

    /// Keys of every live room, in slot order.
    pub(crate) fn keys(&self) -> Vec<RoomKey> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.room.is_some())
            .map(|(i, s)| RoomKey {
                index: i as u32,
                generation: s.generation,
            })
            .collect()
    }

    /// The key of the live room called `name`, if any.
    pub(crate) fn key_of(&self, name: &str) -> Option<RoomKey> {
        let &index = self.by_name.get(name)?;
        Some(RoomKey {
            index,
            generation: self.slots[index as usize].generation,
        })
    }

    /// Live rooms in slot order (unspecified; callers sort what they show).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Room> + '_ {
        self.slots.iter().filter_map(|s| s.room.as_ref())
    }

    /// Number of live rooms.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// A fresh epoch: 16 hex digits of SplitMix64 over the daemon seed and a creation counter.
    ///
    /// SplitMix64's mixing step is a bijection, and distinct counters give distinct inputs for one seed,
    /// so two rooms of one daemon never share an epoch; across restarts the seed differs (the reactor
    /// passes pid ^ start time), so a collision is a 2^-64 chance. Epochs are opaque to clients, who only
    /// compare them.
    pub(crate) fn next_epoch(&mut self) -> Box<str> {
        self.created += 1;
        let mut z = self
            .epoch_seed
            .wrapping_add(self.created.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        format!("{z:016x}").into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn open_finds_or_creates() {
        let mut rooms = Rooms::new(1);
        let (a, _) = rooms.open("a");
        let (b, _) = rooms.open("b");
        let (a2, _) = rooms.open("a");
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert_eq!(rooms.len(), 2);
        assert_eq!(&*rooms.find("b").unwrap().name, "b");
        assert!(rooms.find("c").is_none());
    }

    #[test]
    fn freed_slot_is_reused_with_a_new_generation_and_epoch() {
        let mut rooms = Rooms::new(1);
        let (a, room) = rooms.open("a");
        let epoch_a = room.epoch.clone();
        rooms.free(a);
        assert!(rooms.get(a).is_none());
        assert!(rooms.find("a").is_none());
        assert_eq!(rooms.len(), 0);
        rooms.free(a); // freeing twice is harmless
        let (c, room) = rooms.open("c");
        assert_ne!(room.epoch, epoch_a);
        assert_eq!(c.index, a.index, "slot reused");
        assert_ne!(c, a);
        assert!(rooms.get(a).is_none(), "old key stays stale");
        assert_eq!(&*rooms.get(c).unwrap().name, "c");
        rooms.free(a); // a stale key frees nothing
        assert!(rooms.get(c).is_some());
    }

    #[test]
    fn epochs_are_distinct_and_depend_on_the_seed() {
        let mut rooms = Rooms::new(42);
        let epochs: HashSet<Box<str>> = (0..1000).map(|_| rooms.next_epoch()).collect();
        assert_eq!(epochs.len(), 1000);
        assert!(epochs.iter().all(|e| e.len() == 16));
        let mut other = Rooms::new(43);
        assert!(!epochs.contains(&other.next_epoch()));
    }
}
