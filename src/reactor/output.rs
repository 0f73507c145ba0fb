//! Writing: queueing output in the cork, writing it out once per turn, the slow-consumer rule,
//! closing and dropping connections.

use log::debug;

use crate::protocol::close::write_close_payload;
use crate::protocol::deflate::SMALL_WINDOW;
use crate::protocol::frame::{decode_header, encode_header, Decoded, Fin, SharedFrame, MAX_HEADER};
use crate::protocol::{CloseCode, OpCode};

use super::conn::{flag, Phase, NONE};
use super::cork::{self, Item, CORK_FLUSH, TWIN_PENDING};
use super::service::{Departure, Io, Service, Shared};
use super::{ConnKey, Core, Running, CORK_FLUSH_NODES, ZBUF_KEEP};

impl<S: Service> Core<S> {
    /// Queues raw bytes (an HTTP answer) for one connection.
    pub(super) fn send_bytes(&mut self, key: ConnKey, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(key.index as usize) else {
            return;
        };
        self.cork.push_local(key.index, c, &[bytes]);
        self.check_cork();
    }

    /// Queues one frame for one connection, header and payload copied once; a data frame for a
    /// deflate peer goes compressed when that pays.
    pub(super) fn send_frame(&mut self, key: ConnKey, opcode: OpCode, payload: &[u8]) {
        let Some(c) = self
            .conns
            .get_mut(key.index as usize)
            .filter(|c| c.gen == key.gen)
        else {
            return;
        };
        if c.has(flag::DEFLATE) && matches!(opcode, OpCode::Text | OpCode::Binary) {
            let min = self.limits.deflate.map_or(usize::MAX, |d| d.min_bytes);
            let fits = !c.has(flag::SMALL_WINDOW) || payload.len() <= SMALL_WINDOW;
            let frame = match self.deflater.as_mut() {
                Some(d) if payload.len() >= min && fits => d.frame(opcode, payload, &mut self.zbuf),
                _ => None,
            };
            if let Some(frame) = frame {
                self.metrics.deflate_bytes_in += payload.len() as u64;
                self.metrics.deflate_bytes_out += frame.len() as u64;
                self.cork.push_local(key.index, c, &[frame]);
                self.metrics.messages_sent += 1;
                if self.zbuf.capacity() > ZBUF_KEEP {
                    self.zbuf = Vec::new();
                }
                self.check_cork();
                return;
            }
            self.metrics.deflate_skipped += 1;
        }
        let mut header = [0u8; MAX_HEADER];
        let h = encode_header(&mut header, Fin::Final, opcode, payload.len() as u64, None);
        self.cork.push_local(key.index, c, &[&header[..h], payload]);
        if opcode != OpCode::Close {
            self.metrics.messages_sent += 1;
        }
        self.check_cork();
    }

    #[inline]
    /// Links shared frame `frame` into one connection's list: for a deflate peer its compressed
    /// twin, made once per shared frame at the first such peer (and not at all without one).
    pub(super) fn send_shared(&mut self, key: ConnKey, frame: Shared) {
        let Some(c) = self.conn(key) else {
            return;
        };
        let (item, len) = if c.has(flag::DEFLATE) {
            let twin = self.twin_of(frame.index, c.has(flag::SMALL_WINDOW));
            if twin == frame.index {
                (twin, frame.len)
            } else {
                (twin, self.cork.shared[twin as usize].frame().len() as u32)
            }
        } else {
            (frame.index, frame.len)
        };
        if let Some(c) = self
            .conns
            .get_mut(key.index as usize)
            .filter(|c| c.gen == key.gen)
        {
            self.cork.link(key.index, c, Item::Shared(item), len);
            self.metrics.messages_sent += 1;
            if self.cork.nodes.len() >= CORK_FLUSH_NODES {
                self.flush_cork();
            }
        }
    }

    /// What a deflate peer gets for shared frame `i`: its compressed twin when there is one (and it
    /// fits the peer's window), else `i` itself.
    fn twin_of(&mut self, i: u32, small_window: bool) -> u32 {
        let mut twin = self.cork.twins[i as usize];
        if twin == TWIN_PENDING {
            twin = self.compress_shared(i);
            self.cork.twins[i as usize] = twin;
        }
        if twin == NONE || (small_window && self.cork.shared[i as usize].text_len() > SMALL_WINDOW)
        {
            i
        } else {
            twin
        }
    }

    /// Compresses shared frame `i` once into a shared frame of its own; `NONE` when that does not
    /// pay (small, incompressible) or deflate is off.
    fn compress_shared(&mut self, i: u32) -> u32 {
        let original: SharedFrame = self.cork.shared[i as usize].clone();
        let bytes = original.frame();
        let Ok(Decoded::Done(h)) = decode_header(bytes) else {
            unreachable!("bug: a shared frame without a header")
        };
        let payload = &bytes[h.header_len..];
        let min = self.limits.deflate.map_or(usize::MAX, |d| d.min_bytes);
        let frame = match self.deflater.as_mut() {
            Some(d) if payload.len() >= min => d.frame(h.opcode, payload, &mut self.zbuf),
            _ => None,
        };
        let Some(frame) = frame else {
            self.metrics.deflate_skipped += 1;
            return NONE;
        };
        self.metrics.deflate_bytes_in += payload.len() as u64;
        self.metrics.deflate_bytes_out += frame.len() as u64;
        let twin = SharedFrame::new(std::rc::Rc::from(frame), frame.len());
        if self.zbuf.capacity() > ZBUF_KEEP {
            self.zbuf = Vec::new();
        }
        self.cork.share_twin(twin)
    }

    pub(super) fn check_cork(&mut self) {
        if self.cork.bytes.len() >= CORK_FLUSH {
            self.flush_cork();
        }
    }

    /// Writes out every list in the cork now, mid-turn, and empties it; what the sockets do not take
    /// goes to the backlogs. The consequences (slow consumer, closing after the last byte) are left
    /// to the end of the turn, whose flush still visits every connection listed dirty.
    pub(super) fn flush_cork(&mut self) {
        for i in 0..self.cork.dirty.len() {
            let index = self.cork.dirty[i];
            let Some(c) = self.conns.get_mut(index as usize) else {
                continue;
            };
            let key = c.key(index as usize);
            match cork::flush(c, &self.cork) {
                Ok(n) => self.metrics.bytes_sent += n as u64,
                Err(e) => {
                    debug!("write on {index}: {e}");
                    self.doomed.push(key);
                }
            }
        }
        self.cork.clear_items();
    }

    pub(super) fn notify_drained(&mut self, key: ConnKey) {
        if let Some(c) = self.conn_mut(key) {
            if c.pending() == 0 {
                self.drained.push(key);
            } else {
                c.set(flag::DRAIN, true);
            }
        }
    }

    /// Puts a connection on the ready list (once).
    pub(super) fn defer(&mut self, key: ConnKey) {
        if let Some(c) = self.conn_mut(key) {
            if !c.has(flag::READY) {
                c.set(flag::READY, true);
                self.ready.push(key);
            }
        }
    }

    /// Answers with `bytes` and closes once they are written.
    pub(super) fn answer_and_close(&mut self, key: ConnKey, bytes: &[u8]) {
        self.send_bytes(key, bytes);
        let deadline = self.tick32() + self.limits.close_ticks;
        if let Some(c) = self.conn_mut(key) {
            c.phase = Phase::Finishing { deadline };
        }
        self.arm(key, deadline);
    }
}

impl<S: Service> Running<S> {
    /// Sends a close frame, leaves the service and waits for the peer's FIN.
    pub(super) fn fail(&mut self, key: ConnKey, code: CloseCode, reason: &str, why: Departure) {
        let Some(c) = self.core.conn_mut(key) else {
            return;
        };
        if !matches!(c.phase, Phase::Open { .. }) {
            return; // not open, or closing already
        }
        let Phase::Open { endpoint, ws } = std::mem::replace(&mut c.phase, Phase::Busy) else {
            unreachable!("bug: checked open above")
        };
        let (endpoint, ws) = (Some(endpoint), Some(ws));
        // After 1002/1007/1009 the input may be cut mid-frame: stop decoding.
        let peer = ws.filter(|_| {
            matches!(
                code,
                CloseCode::Normal | CloseCode::Away | CloseCode::Policy | CloseCode::Unsupported
            )
        });
        let mut payload = [0u8; 125];
        let n = write_close_payload(code, reason, &mut payload);
        self.core.send_frame(key, OpCode::Close, &payload[..n]);
        if let Some(endpoint) = endpoint {
            self.detach(key, endpoint, why);
        }
        let deadline = self.core.tick32() + self.core.limits.close_ticks;
        if let Some(c) = self.core.conn_mut(key) {
            c.phase = Phase::ClosingByUs {
                deadline,
                fin_sent: false,
                peer,
            };
        }
        self.core.arm(key, deadline);
        debug!("closing {} with {code}: {reason}", key.index);
    }

    /// Tells the service an open connection has ended.
    pub(super) fn detach(&mut self, key: ConnKey, endpoint: S::Endpoint, why: Departure) {
        self.core.websockets -= 1;
        let Running { core, svc } = self;
        svc.handle_closed(&mut Io { core }, key, endpoint, why);
    }

    pub(super) fn on_writable(&mut self, index: usize) {
        let Some(c) = self.core.conns.get(index) else {
            return;
        };
        if c.backlog_bytes() > 0 {
            let key = c.key(index);
            self.flush_one(key);
        }
    }

    /// Writes one connection's pending output and applies the consequences: slow consumer, FIN
    /// after our close, closing after the last bytes, reading again after a pause.
    pub(super) fn flush_one(&mut self, key: ConnKey) {
        let tick = self.core.tick32();
        let limits = self.core.limits;
        let Some(c) = self
            .core
            .conns
            .get_mut(key.index as usize)
            .filter(|c| c.gen == key.gen)
        else {
            return;
        };
        match cork::flush(c, &self.core.cork) {
            Ok(n) => {
                self.core.metrics.bytes_sent += n as u64;
                if n > 0 && !matches!(c.phase, Phase::Open { .. }) {
                    c.progress = tick;
                }
            }
            Err(e) => {
                debug!("write on {}: {e}", key.index);
                self.drop_conn(key, Departure::Left);
                return;
            }
        }
        // The common case (everything written, nothing to watch) costs one test of the flags and
        // one of the backlog.
        let backlog = c.backlog_bytes();
        if backlog == 0 && c.flags & (flag::PAUSED | flag::DRAIN) == 0 {
            match c.phase {
                Phase::Open { .. } => return,
                Phase::Finishing { .. } => return self.core.doomed.push(key),
                _ => {}
            }
        }
        match c.phase {
            Phase::Open { .. } if backlog > limits.max_outbound => {
                self.core.metrics.slow_consumers += 1;
                debug!("slow consumer {}: {backlog} bytes pending", key.index);
                c.truncate_backlog();
                self.fail(key, CloseCode::Policy, "slow consumer", Departure::Left);
                // The close frame is in the cork: write it now if the socket allows.
                self.flush_one(key);
                return;
            }
            Phase::Finishing { .. } if backlog == 0 => self.core.doomed.push(key),
            Phase::ClosingByUs {
                fin_sent: false, ..
            } if backlog == 0 => {
                // Our close is out: send FIN and wait for the peer's.
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
                if let Phase::ClosingByUs { fin_sent, .. } = &mut c.phase {
                    *fin_sent = true;
                }
            }
            _ => {}
        }
        // Nothing is corked for `c` any more: its pending output is its backlog.
        if c.has(flag::PAUSED) && backlog < limits.resume_at {
            c.set(flag::PAUSED, false);
            self.core.defer(key);
        }
        let c = &mut self.core.conns[key.index as usize];
        if c.has(flag::DRAIN) && backlog == 0 {
            c.set(flag::DRAIN, false);
            self.core.drained.push(key);
        }
    }

    /// Flushes every connection written to this turn, tells the service who has drained, then
    /// closes the doomed; until nothing is left to do.
    pub(super) fn end_turn(&mut self) {
        loop {
            if self.core.cork.dirty.is_empty()
                && self.core.doomed.is_empty()
                && self.core.drained.is_empty()
            {
                break;
            }
            let dirty = std::mem::take(&mut self.core.cork.dirty);
            for &index in &dirty {
                if let Some(c) = self.core.conns.get(index as usize) {
                    let key = c.key(index as usize);
                    self.flush_one(key);
                }
            }
            let mut dirty = dirty;
            dirty.clear();
            if self.core.cork.dirty.is_empty() {
                self.core.cork.clear();
                self.core.cork.dirty = dirty;
            }
            for key in std::mem::take(&mut self.core.drained) {
                if let Some(Phase::Open { endpoint, .. }) = self.core.conn(key).map(|c| &c.phase) {
                    let endpoint = *endpoint;
                    let Running { core, svc } = self;
                    svc.handle_drained(&mut Io { core }, key, endpoint);
                    self.settle();
                }
            }
            for key in std::mem::take(&mut self.core.doomed) {
                self.drop_conn(key, Departure::Left);
            }
        }
    }

    /// Closes the socket and forgets the connection.
    pub(super) fn drop_conn(&mut self, key: ConnKey, why: Departure) {
        let Some(c) = self.core.conn_mut(key) else {
            return;
        };
        if let Phase::Open { endpoint, .. } = std::mem::replace(&mut c.phase, Phase::Busy) {
            self.detach(key, endpoint, why);
        }
        let c = self.core.conns.remove(key.index as usize);
        if c.cork_head != NONE {
            // Its cork list dies with it; the turn's dirty list skips missing slots.
            self.core.cork.dirty.retain(|&i| i != key.index);
        }
        if let Some(ip) = self.core.ip_of.remove(&key.index) {
            if let Some(n) = self.core.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.core.per_ip.remove(&ip);
                }
            }
        }
        debug!("connection {} closed", key.index);
    }
}
