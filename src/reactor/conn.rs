//! One connection: its socket, its phase, its unread tail and its output.
//!
//! `Conn` is kept small because there may be tens of thousands: an idle open
//! WebSocket owns no heap (empty `tail`, empty backlog, no message underway).
//! Output for the current loop turn is not stored here but in the reactor's
//! `Cork` (`cork.rs`), one shared arena for all connections; only
//! bytes a socket would not take go to the per-connection [`Backlog`].

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use mio::net::TcpStream;

use crate::protocol::frame::SharedFrame;
use crate::protocol::WebSocket;

/// A slab key with the generation of its occupant, so a deadline or a chat
/// membership that outlives its connection is recognised as stale after the
/// slot is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub(crate) index: u32,
    pub(crate) gen: u32,
}

impl ConnKey {
    /// Both halves in one number (generation high, slot low), for services that keep connections
    /// in their own tables.
    pub fn to_u64(self) -> u64 {
        ((self.gen as u64) << 32) | self.index as u64
    }

    /// The inverse of [`ConnKey::to_u64`].
    pub fn from_u64(v: u64) -> ConnKey {
        ConnKey {
            index: v as u32,
            gen: (v >> 32) as u32,
        }
    }

    /// The slab slot, for logs.
    pub fn index(self) -> u32 {
        self.index
    }
}

/// The state of one connection. Deadlines are ticks of the timer wheel.
/// `E` is what the service attaches an open WebSocket to.
#[derive(Debug)]
pub(crate) enum Phase<E> {
    /// Waiting for a complete HTTP request head (the first one, or the next
    /// one on a keep-alive connection); dropped at `deadline`.
    AwaitingRequest { deadline: u32 },
    /// A request answered [`Answer::Later`](super::Answer::Later): waiting for the service's
    /// answer until `deadline`; input is discarded meanwhile (the answer closes the connection).
    AwaitingAnswer { deadline: u32 },
    /// An open WebSocket.
    Open { ws: WebSocket, endpoint: E },
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
    Shared(SharedFrame),
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
pub(crate) fn write_some(stream: &mut TcpStream, iov: &[IoSlice<'_>]) -> io::Result<usize> {
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

/// Bits of [`Conn::flags`].
pub(crate) mod flag {
    /// A ping went out since the last frame in (heartbeat step one).
    pub(crate) const PINGED: u8 = 1;
    /// Its pending output is over the read budget's threshold: it is not read until that drains
    /// (TCP backpressure instead of more queued output).
    pub(crate) const PAUSED: u8 = 2;
    /// On the reactor's ready list: read again next turn (its read budget ran out, or it was
    /// paused and has drained).
    pub(crate) const READY: u8 = 4;
    /// The service asked to hear when its output has drained.
    pub(crate) const DRAIN: u8 = 8;
    /// permessage-deflate was negotiated: data messages may go compressed (RSV1). Only a bit: no
    /// context is kept between messages either way (`protocol::deflate`), so a deflate peer costs
    /// nothing more than another while idle.
    pub(crate) const DEFLATE: u8 = 16;
    /// The peer limited our window (`server_max_window_bits`): only messages of at most
    /// `deflate::SMALL_WINDOW` bytes go compressed to it.
    pub(crate) const SMALL_WINDOW: u8 = 32;
}

/// One connection's slot in the slab.
#[derive(Debug)]
pub(crate) struct Conn<E> {
    pub(crate) stream: TcpStream,
    pub(crate) gen: u32,
    /// Tick of the last progress. Open: the last frame received (heartbeat and idle timeout).
    /// Other phases: the last bytes written, so that a large answer still moving to a slow reader
    /// is not cut by a deadline (deadlines measure lack of progress, not elapsed time).
    pub(crate) progress: u32,
    /// Due tick of this connection's live timer entry; other entries are stale.
    pub(crate) timer_due: u32,
    /// First and last node of this turn's output in the cork, or `NONE`.
    pub(crate) cork_head: u32,
    pub(crate) cork_tail: u32,
    /// Bytes in this turn's cork list. INVARIANT: 0 when `cork_head` is `NONE`.
    pub(crate) corked: u32,
    /// [`flag`] bits.
    pub(crate) flags: u8,
    pub(crate) phase: Phase<E>,
    spill: Option<Box<Spill>>,
}

impl<E> Conn<E> {
    /// A connection that has just been accepted.
    pub(crate) fn new(stream: TcpStream, gen: u32, phase: Phase<E>, tick: u32) -> Conn<E> {
        Conn {
            stream,
            gen,
            progress: tick,
            timer_due: 0,
            cork_head: NONE,
            cork_tail: NONE,
            corked: 0,
            flags: 0,
            phase,
            spill: None,
        }
    }

    pub(crate) fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    pub(crate) fn set(&mut self, f: u8, on: bool) {
        if on {
            self.flags |= f;
        } else {
            self.flags &= !f;
        }
    }

    /// Output queued and not yet written: this turn's and the backlog.
    pub(crate) fn pending(&self) -> usize {
        self.backlog_bytes() + self.corked as usize
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

    /// Writes as much of the backlog as the socket takes; returns the bytes written.
    pub(crate) fn write_backlog(&mut self) -> io::Result<usize> {
        let Some(spill) = self.spill.as_mut() else {
            return Ok(0);
        };
        let n = spill.backlog.write_to(&mut self.stream)?;
        self.trim_spill();
        Ok(n)
    }

    pub(crate) fn backlog_mut(&mut self) -> &mut Backlog {
        &mut self.spill.get_or_insert_with(Default::default).backlog
    }

    pub(crate) fn trim_spill(&mut self) {
        if self
            .spill
            .as_ref()
            .is_some_and(|s| s.tail.is_empty() && s.backlog.is_empty())
        {
            self.spill = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Density (SPEC §1): what every open connection costs in the slab.
    #[test]
    #[cfg_attr(
        debug_assertions,
        ignore = "mio's sockets carry a selector id in debug builds; checked in release"
    )]
    fn an_idle_connection_is_small() {
        assert!(
            std::mem::size_of::<Conn<[u32; 3]>>() <= 80,
            "Conn is {} bytes",
            std::mem::size_of::<Conn<[u32; 3]>>()
        );
        assert_eq!(std::mem::size_of::<WebSocket>(), 16);
    }
}
