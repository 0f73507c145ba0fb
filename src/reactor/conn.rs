//! One connection: its socket, its phase, its unread tail and its output.
//!
//! `Conn` is kept small because there may be tens of thousands: an idle open
//! WebSocket owns no heap (empty `tail`, empty backlog, no message underway).
//! Output for the current loop turn is not stored here but in the reactor's
//! [`Cork`], one shared arena for all connections; only bytes a socket would
//! not take go to the per-connection [`Backlog`].

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use mio::net::TcpStream;

use crate::chat::{EventFrame, RoomKey};
use crate::protocol::WebSocket;

/// A slab key with the generation of its occupant, so a deadline or a chat
/// membership that outlives its connection is recognised as stale after the
/// slot is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnKey {
    pub(crate) index: u32,
    pub(crate) gen: u32,
}

impl ConnKey {
    pub(crate) fn member(self) -> crate::chat::MemberId {
        crate::chat::MemberId(((self.gen as u64) << 32) | self.index as u64)
    }

    pub(crate) fn from_member(m: crate::chat::MemberId) -> ConnKey {
        ConnKey {
            index: m.0 as u32,
            gen: (m.0 >> 32) as u32,
        }
    }
}

/// What a WebSocket connection is attached to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Endpoint {
    Echo,
    Global,
    Room(RoomKey),
    /// Cluster mode: the room join is with the cluster bridge; the `welcome` comes with its answer,
    /// and text frames wait (in the reactor's `Joining` entry) until then.
    Joining,
}

/// The state of one connection. Deadlines are ticks of the timer wheel.
#[derive(Debug)]
pub(crate) enum Phase {
    /// Waiting for a complete HTTP request head (the first one, or the next
    /// one on a keep-alive connection); dropped at `deadline`.
    AwaitingRequest { deadline: u32 },
    /// An open WebSocket.
    Open { ws: WebSocket, endpoint: Endpoint },
    /// We sent (or queued) Close: input is discarded until the peer's FIN,
    /// at most until `deadline` (5 s). `fin_sent`: our write side is shut.
    /// `peer`: the decoder, kept when we closed for a reason that left it in
    /// step with the stream (shutdown, slow consumer, 1003), so the peer's
    /// Close is noticed and the connection ends at once (RFC 6455 §7.1.1: the
    /// server closes TCP first). After a protocol error it is `None` and the
    /// rest of the input is discarded.
    ClosingByUs {
        deadline: u32,
        fin_sent: bool,
        peer: Option<WebSocket>,
    },
    /// Writing the last bytes (an HTTP answer, a close echo), then closing.
    Finishing { deadline: u32 },
    /// Transient: the WebSocket is moved out while one of its events is handled.
    Busy,
}

/// A chunk of pending output: a frame of our own or one shared by a broadcast.
#[derive(Debug)]
pub(crate) enum Chunk {
    Owned(Vec<u8>),
    Shared(EventFrame),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(r) => r.frame(),
        }
    }
}

/// Output a socket did not take yet. Empty (no heap) for a healthy peer.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written. INVARIANT: < front's length.
    offset: usize,
    /// Bytes still to write, over all chunks.
    pub(crate) bytes: usize,
}

impl Backlog {
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    pub(crate) fn push(&mut self, chunk: Chunk) {
        let n = chunk.bytes().len();
        if n > 0 {
            self.bytes += n;
            self.chunks.push_back(chunk);
        }
    }

    /// Queues a chunk whose first `written` bytes are already on the wire.
    /// Only valid on an empty backlog (the chunk becomes the front).
    pub(crate) fn push_started(&mut self, chunk: Chunk, written: usize) {
        assert!(self.chunks.is_empty(), "bug: a started chunk behind others");
        self.offset = written;
        self.bytes = chunk.bytes().len() - written;
        self.chunks.push_back(chunk);
    }

    /// Drops everything not yet begun: the front chunk is kept (its frame is
    /// half on the wire) so that a close frame queued next stays well framed.
    pub(crate) fn truncate_to_current_frame(&mut self) {
        if self.offset == 0 {
            self.chunks.clear();
            self.bytes = 0;
        } else {
            self.chunks.truncate(1);
            self.bytes = self
                .chunks
                .front()
                .map_or(0, |c| c.bytes().len() - self.offset);
        }
    }

    /// Marks `n` bytes written.
    fn consume(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let front = self
                .chunks
                .front()
                .expect("bug: consumed past the backlog")
                .bytes()
                .len()
                - self.offset;
            if n >= front {
                n -= front;
                self.offset = 0;
                self.chunks.pop_front();
            } else {
                self.offset += n;
                n = 0;
            }
        }
        if self.chunks.is_empty() && self.chunks.capacity() > 0 {
            // Give the ring back: an idle connection holds no heap.
            self.chunks = VecDeque::new();
        }
    }

    /// Writes as much as the socket takes; returns bytes written.
    pub(crate) fn write_to(&mut self, stream: &mut TcpStream) -> io::Result<usize> {
        let mut total = 0;
        while !self.is_empty() {
            let mut iov = [IoSlice::new(&[]); 64];
            let mut n_iov = 0;
            for (i, c) in self.chunks.iter().take(iov.len()).enumerate() {
                let b = c.bytes();
                iov[i] = IoSlice::new(if i == 0 { &b[self.offset..] } else { b });
                n_iov += 1;
            }
            match write_some(stream, &iov[..n_iov])? {
                0 => break,
                n => {
                    self.consume(n);
                    total += n;
                }
            }
        }
        Ok(total)
    }
}

/// One `writev` (a single slice makes it a plain write): the bytes the
/// socket took, 0 when it is full (`WouldBlock`). `Interrupted` is retried;
/// a socket that takes nothing without blocking is an error.
fn write_some(stream: &mut TcpStream, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    loop {
        match stream.write_vectored(iov) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// "No node": the end of a cork list.
pub(crate) const NONE: u32 = u32::MAX;

/// Slices per `writev`: enough for a busy turn's frames to one peer, and cheap to set up (the
/// profile showed a 64-entry array costing more than the syscall's own user-space work); longer
/// lists take more rounds.
const IOV_BATCH: usize = 16;

/// What a connection holds only while something is incomplete or unwritten.
/// Boxed behind an `Option` so a connection with nothing pending (the
/// normal case) pays one pointer for it and owns no heap.
#[derive(Debug, Default)]
pub(crate) struct Spill {
    /// Unconsumed input. INVARIANT: non-empty only while a request head, a
    /// frame header or a control frame is incomplete (payloads of data frames
    /// are taken by the WebSocket as they arrive), so it stays small.
    tail: Vec<u8>,
    backlog: Backlog,
}

/// One connection's slot in the slab.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    pub(crate) gen: u32,
    /// Tick of the last frame received (heartbeat and idle timeout).
    pub(crate) last_rx: u32,
    /// Due tick of this connection's live timer entry; other entries are stale.
    pub(crate) timer_due: u32,
    /// First and last node of this turn's output in the cork, or `NONE`.
    pub(crate) cork_head: u32,
    pub(crate) cork_tail: u32,
    /// A ping went out since the last frame in (heartbeat step one).
    pub(crate) pinged: bool,
    pub(crate) phase: Phase,
    spill: Option<Box<Spill>>,
}

impl Conn {
    /// A connection that has just been accepted.
    pub(crate) fn new(stream: TcpStream, gen: u32, phase: Phase, tick: u32) -> Conn {
        Conn {
            stream,
            gen,
            last_rx: tick,
            timer_due: 0,
            cork_head: NONE,
            cork_tail: NONE,
            pinged: false,
            phase,
            spill: None,
        }
    }

    pub(crate) fn key(&self, index: usize) -> ConnKey {
        ConnKey {
            index: index as u32,
            gen: self.gen,
        }
    }

    /// Input kept from the previous read.
    pub(crate) fn tail(&self) -> &[u8] {
        self.spill.as_ref().map_or(&[], |s| &s.tail)
    }

    /// Replaces the kept input with `bytes` (empty: keep nothing).
    pub(crate) fn set_tail(&mut self, bytes: &[u8]) {
        if bytes.is_empty() && self.spill.is_none() {
            return;
        }
        let spill = self.spill.get_or_insert_with(Default::default);
        spill.tail.clear();
        if bytes.is_empty() {
            spill.tail = Vec::new();
        } else {
            spill.tail.extend_from_slice(bytes);
        }
        self.trim_spill();
    }

    /// Bytes waiting for the socket to take them.
    pub(crate) fn backlog_bytes(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.backlog.bytes)
    }

    /// Keeps only the frame being written (slow consumer: the rest is dropped).
    pub(crate) fn truncate_backlog(&mut self) {
        if let Some(s) = self.spill.as_mut() {
            s.backlog.truncate_to_current_frame();
        }
        self.trim_spill();
    }

    fn backlog_mut(&mut self) -> &mut Backlog {
        &mut self.spill.get_or_insert_with(Default::default).backlog
    }

    fn trim_spill(&mut self) {
        if self
            .spill
            .as_ref()
            .is_some_and(|s| s.tail.is_empty() && s.backlog.is_empty())
        {
            self.spill = None;
        }
    }
}

/// One turn's output for every connection, in buffers reused across turns:
/// a broadcast frame is stored once in `shared` and linked into each
/// recipient's list; frames for one peer (echo, pong, welcome) are copied
/// back to back into `bytes`. At the end of the turn each dirty connection's
/// list becomes one vectored write.
#[derive(Debug, Default)]
pub(crate) struct Cork {
    pub(crate) shared: Vec<EventFrame>,
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
    pub(crate) fn item_bytes(&self, item: Item) -> &[u8] {
        match item {
            Item::Shared(i) => self.shared[i as usize].frame(),
            Item::Local { start, len } => &self.bytes[start as usize..(start + len) as usize],
        }
    }

    /// The bytes of the list starting at `node` when it holds exactly one item: the common fan-out
    /// case, which `flush` writes with a plain `write` instead of building a vector.
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

    /// Appends `item` to `conn`'s list for this turn.
    pub(crate) fn link(&mut self, index: u32, conn: &mut Conn, item: Item) {
        self.link_at(index, &mut conn.cork_head, &mut conn.cork_tail, item);
    }

    /// Appends `item` to the list whose ends are `head` and `tail` (connection `index`'s).
    fn link_at(&mut self, index: u32, head: &mut u32, tail: &mut u32, item: Item) {
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

    /// Forgets this turn, keeping capacity (but not a huge one-off buffer).
    pub(crate) fn clear(&mut self) {
        self.shared.clear();
        self.nodes.clear();
        self.dirty.clear();
        self.bytes.clear();
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
        }
    }
}

/// Writes `conn`'s backlog and then its cork list with as few `writev` calls
/// as possible; whatever the socket does not take is moved to the backlog.
/// Returns the bytes written.
pub(crate) fn flush(conn: &mut Conn, cork: &Cork) -> io::Result<usize> {
    let mut written = 0;
    if conn.backlog_bytes() > 0 {
        let Conn { stream, spill, .. } = conn;
        let backlog = &mut spill.as_mut().expect("bug: backlog without spill").backlog;
        written += backlog.write_to(stream)?;
        conn.trim_spill();
    }
    let mut node = std::mem::replace(&mut conn.cork_head, NONE);
    conn.cork_tail = NONE;
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
    pub fn turn(&mut self, event: &EventFrame) -> usize {
        self.cork.shared.push(event.clone());
        let item = Item::Shared((self.cork.shared.len() - 1) as u32);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Density (SPEC §1): what every open connection costs in the slab.
    #[test]
    fn an_idle_connection_is_small() {
        assert!(
            std::mem::size_of::<Conn>() <= 80,
            "Conn is {} bytes",
            std::mem::size_of::<Conn>()
        );
        assert_eq!(std::mem::size_of::<WebSocket>(), 16);
    }
}
