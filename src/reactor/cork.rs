//! One turn's output: the cork.
//!
//! Everything queued during a turn goes here first, not to the connections: a broadcast frame is
//! stored once and linked into each recipient's list; frames for one peer are copied back to back
//! into one arena. At the end of the turn (or earlier, when the cork holds [`CORK_FLUSH`] bytes) each
//! connection's list becomes one vectored write, and what a socket does not take moves to that
//! connection's backlog (uWebSockets' cork buffer works the same way).

use std::io::{self, IoSlice};

use crate::protocol::frame::SharedFrame;

use super::conn::{write_some, Chunk, Conn, NONE};
use super::service::Shared;

/// Bytes in the cork that make the reactor flush before the turn ends, so a turn's output stays
/// bounded whatever the turn does (thousands of HTTP answers, a flood of echoes).
pub(crate) const CORK_FLUSH: usize = 8 << 20;

/// In [`Cork::twins`]: the compressed twin is not made yet.
pub(crate) const TWIN_PENDING: u32 = NONE - 1;

/// Slices per `writev`: enough for a busy turn's frames to one peer, and cheap to set up (the
/// profile showed a 64-entry array costing more than the syscall's own user-space work); longer
/// lists take more rounds.
const IOV_BATCH: usize = 16;

/// One turn's output for every connection, in buffers reused across turns:
/// a broadcast frame is stored once in `shared` and linked into each
/// recipient's list; frames for one peer (echo, pong, welcome) are copied
/// back to back into `bytes`. At the end of the turn each dirty connection's
/// list becomes one vectored write.
#[derive(Debug, Default)]
pub(crate) struct Cork {
    pub(crate) shared: Vec<SharedFrame>,
    /// For each of `shared`: the index of its compressed twin (permessage-deflate), `NONE` when it
    /// has none, [`TWIN_PENDING`] until a deflate peer first asks for it. A twin has none itself.
    pub(crate) twins: Vec<u32>,
    pub(crate) bytes: Vec<u8>,
    pub(crate) nodes: Vec<Node>,
    /// Slab indices with a list this turn, each once.
    pub(crate) dirty: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Node {
    pub(crate) item: Item,
    pub(crate) next: u32,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Item {
    /// Index into `Cork::shared`.
    Shared(u32),
    /// A range of `Cork::bytes`.
    Local { start: u32, len: u32 },
}

impl Cork {
    #[inline]
    pub(crate) fn item_bytes(&self, item: Item) -> &[u8] {
        match item {
            Item::Shared(i) => self.shared[i as usize].frame(),
            Item::Local { start, len } => {
                &self.bytes[start as usize..start as usize + len as usize]
            }
        }
    }

    /// The bytes of the list starting at `node` when it holds exactly one item: the common fan-out
    /// case, which `flush` writes with a plain `write` instead of building a vector.
    #[inline]
    pub(crate) fn lone(&self, node: u32) -> Option<&[u8]> {
        if node == NONE {
            return None;
        }
        let n = self.nodes[node as usize];
        (n.next == NONE).then(|| self.item_bytes(n.item))
    }

    /// Fills `iov` from the list starting at `node`, the first item from its byte `skip` on, as far
    /// as `iov` goes; returns how many slices were filled and the node after the last one taken
    /// (`NONE` at the end of the list).
    #[inline]
    pub(crate) fn gather<'c>(
        &'c self,
        mut node: u32,
        skip: usize,
        iov: &mut [IoSlice<'c>; IOV_BATCH],
    ) -> (usize, u32) {
        let mut n_iov = 0;
        while node != NONE && n_iov < iov.len() {
            let n = self.nodes[node as usize];
            let b = self.item_bytes(n.item);
            iov[n_iov] = IoSlice::new(if n_iov == 0 { &b[skip..] } else { b });
            n_iov += 1;
            node = n.next;
        }
        (n_iov, node)
    }

    /// Makes `frame` available to this turn's lists; returns its index for [`Item::Shared`].
    pub(crate) fn share(&mut self, frame: &SharedFrame) -> Shared {
        self.shared.push(frame.clone());
        self.twins.push(TWIN_PENDING);
        Shared {
            index: (self.shared.len() - 1) as u32,
            len: frame.frame().len() as u32,
        }
    }

    /// Adds the compressed twin of a shared frame; returns its index.
    pub(crate) fn share_twin(&mut self, twin: SharedFrame) -> u32 {
        self.shared.push(twin);
        self.twins.push(NONE);
        (self.shared.len() - 1) as u32
    }

    /// Appends `item` to `conn`'s list for this turn.
    #[inline]
    pub(crate) fn link<E>(&mut self, index: u32, conn: &mut Conn<E>, item: Item, len: u32) {
        conn.corked = conn.corked.saturating_add(len);
        self.link_at(index, &mut conn.cork_head, &mut conn.cork_tail, item);
    }

    /// Copies `parts` back to back into this turn's bytes and appends them to `conn`'s list as one
    /// item.
    ///
    /// Offsets are 32 bits: the reactor flushes the cork whenever it holds [`CORK_FLUSH`] bytes, and
    /// one item is at most a message (`--max-message-bytes`, at most 1 GiB) or an HTTP answer, so
    /// `bytes` never reaches 4 GiB; the conversions below would panic rather than wrap.
    pub(crate) fn push_local<E>(&mut self, index: u32, conn: &mut Conn<E>, parts: &[&[u8]]) {
        let start = u32::try_from(self.bytes.len()).expect("bug: cork over 4 GiB");
        for p in parts {
            self.bytes.extend_from_slice(p);
        }
        let len = u32::try_from(self.bytes.len()).expect("bug: cork over 4 GiB") - start;
        self.link(index, conn, Item::Local { start, len }, len);
    }

    /// Appends `item` to the list whose ends are `head` and `tail` (connection `index`'s).
    #[inline]
    pub(crate) fn link_at(&mut self, index: u32, head: &mut u32, tail: &mut u32, item: Item) {
        let id = self.nodes.len() as u32;
        self.nodes.push(Node { item, next: NONE });
        if *head == NONE {
            *head = id;
            self.dirty.push(index);
        } else {
            self.nodes[*tail as usize].next = id;
        }
        *tail = id;
    }

    /// Forgets the items of a cork written out mid-turn, keeping the dirty list (those connections
    /// still get their end-of-turn flush, which applies the consequences).
    ///
    /// The shared frames (and their compressed twins) stay until the end of the turn: a `Shared`
    /// the service holds (in the middle of `Io::broadcast` to a large room, say) must keep naming
    /// the same frame.
    pub(crate) fn clear_items(&mut self) {
        self.nodes.clear();
        self.bytes.clear();
    }

    /// Forgets this turn, keeping capacity (but not a huge one-off buffer).
    pub(crate) fn clear(&mut self) {
        self.clear_items();
        self.shared.clear();
        self.twins.clear();
        self.dirty.clear();
        // A burst (thousands of handshakes in one turn, a 16 MiB echo) must
        // not leave its high-water mark behind: that would be paid for by
        // every idle connection in the density figure.
        const KEEP_BYTES: usize = 256 * 1024;
        const KEEP_NODES: usize = 8 * 1024;
        if self.bytes.capacity() > KEEP_BYTES {
            self.bytes.shrink_to(KEEP_BYTES / 4);
        }
        if self.nodes.capacity() > KEEP_NODES {
            self.nodes.shrink_to(KEEP_NODES / 4);
        }
        if self.dirty.capacity() > KEEP_NODES {
            self.dirty.shrink_to(KEEP_NODES / 4);
        }
        if self.shared.capacity() > KEEP_NODES {
            self.shared.shrink_to(KEEP_NODES / 4);
            self.twins.shrink_to(KEEP_NODES / 4);
        }
    }
}

/// Writes `conn`'s backlog and then its cork list with as few `writev` calls
/// as possible; whatever the socket does not take is moved to the backlog.
/// Returns the bytes written.
pub(crate) fn flush<E>(conn: &mut Conn<E>, cork: &Cork) -> io::Result<usize> {
    let mut written = 0;
    if conn.backlog_bytes() > 0 {
        written += conn.write_backlog()?;
    }
    let mut node = std::mem::replace(&mut conn.cork_head, NONE);
    conn.cork_tail = NONE;
    conn.corked = 0;
    // Skipped when the backlog is still non-empty: order must be kept.
    let mut skip = 0usize;
    // The common case in fan-out: one frame for this peer this turn. A plain
    // write spares building the vector below; a short one means the socket is full.
    let mut full = false;
    if let Some(bytes) = cork.lone(node).filter(|_| conn.backlog_bytes() == 0) {
        let n = write_some(&mut conn.stream, &[IoSlice::new(bytes)])?;
        written += n;
        if n == bytes.len() {
            node = NONE;
        } else {
            skip = n;
            full = true;
        }
    }
    while node != NONE && !full && conn.backlog_bytes() == 0 {
        let mut iov = [IoSlice::new(&[]); IOV_BATCH];
        let (n_iov, cursor) = cork.gather(node, skip, &mut iov);
        let mut n = match write_some(&mut conn.stream, &iov[..n_iov])? {
            0 => break,
            n => n,
        };
        written += n;
        // Advance over what was written.
        while n > 0 {
            let left = cork.item_bytes(cork.nodes[node as usize].item).len() - skip;
            if n >= left {
                n -= left;
                skip = 0;
                node = cork.nodes[node as usize].next;
            } else {
                skip += n;
                n = 0;
            }
        }
        if cursor != NONE && node == cursor {
            continue; // the whole batch went out; more nodes follow
        }
        if node != NONE {
            break; // short write: the socket is full
        }
    }
    // Keep what the socket did not take. A frame cut by a short write keeps
    // its written prefix and an offset, so the backlog knows it is mid-frame.
    while node != NONE {
        let n = cork.nodes[node as usize];
        let chunk = match n.item {
            Item::Shared(i) => Chunk::Shared(cork.shared[i as usize].clone()),
            item => Chunk::Owned(cork.item_bytes(item).to_vec()),
        };
        if skip > 0 {
            conn.backlog_mut().push_started(chunk, skip);
        } else {
            conn.backlog_mut().push(chunk);
        }
        skip = 0;
        node = n.next;
    }
    conn.trim_spill();
    Ok(written)
}

/// Bench-only (`wisp::_benchable`): one turn of the broadcast path for `n` recipients, without
/// sockets, so `benches/fanout.rs` can time what Wisp adds per recipient on top of the kernel.
#[doc(hidden)]
#[derive(Debug)]
pub struct BenchFanout {
    cork: Cork,
    /// Each recipient's list ends, as `Conn::cork_head` / `cork_tail`.
    lists: Vec<(u32, u32)>,
}

impl BenchFanout {
    /// Lists for `recipients` connections.
    pub fn new(recipients: usize) -> BenchFanout {
        BenchFanout {
            cork: Cork::default(),
            lists: vec![(NONE, NONE); recipients],
        }
    }

    /// Shares `event`'s frame once, links it into every recipient's list (as the reactor's
    /// `broadcast`), then takes each list's bytes as [`flush`] does before its `write` (one frame)
    /// or `writev` (several), and forgets the turn. Returns the bytes the writes would carry.
    pub fn turn(&mut self, event: &SharedFrame) -> usize {
        let item = Item::Shared(self.cork.share(event).index);
        for (i, (head, tail)) in self.lists.iter_mut().enumerate() {
            self.cork.link_at(i as u32, head, tail, item);
        }
        let mut total = 0;
        for (head, tail) in &mut self.lists {
            let node = std::mem::replace(head, NONE);
            *tail = NONE;
            // As in `flush`: a lone frame is written as it is, without a vector.
            if let Some(bytes) = self.cork.lone(node) {
                total += std::hint::black_box(bytes).len();
                continue;
            }
            let mut iov = [IoSlice::new(&[]); IOV_BATCH];
            let (n_iov, _) = self.cork.gather(node, 0, &mut iov);
            total += std::hint::black_box(&iov[..n_iov])
                .iter()
                .map(|b| b.len())
                .sum::<usize>();
        }
        self.cork.clear();
        total
    }
}
