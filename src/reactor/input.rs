//! Reading: the per-turn read budget, the pause on output over budget, and decoding what was read
//! (a request head, frames) into calls on the service.

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr};

use log::debug;

use crate::protocol::close::write_close_payload;
use crate::protocol::deflate::{self, Agreement};
use crate::protocol::handshake;
use crate::protocol::websocket::inflate_message;
use crate::protocol::{CloseCode, Decoded, Event, OpCode, Role, WebSocket};

use super::conn::{flag, Phase};
use super::service::{Answer, Departure, Io, KeepAlive, Message, Service};
use super::{ConnKey, Running, PONGS_PER_READ, READ_BUDGET};

/// Why frame handling stopped early.
enum Stop {
    /// Fail the connection with this code.
    Fail(CloseCode, &'static str),
    /// The peer closed and we answered.
    Echoed,
}

impl<S: Service> Running<S> {
    /// Reads what the connection has sent, within this turn's budget, and hands it to its phase.
    /// `drain`: read until the socket says `WouldBlock` (a short read does not prove it empty when
    /// a FIN may be queued, or when called from the ready list).
    pub(super) fn on_readable(&mut self, index: usize, rbuf: &mut [u8], drain: bool) {
        let mut budget = READ_BUDGET;
        // The kept tail is served before anything new is read (see below).
        let mut tail_first = true;
        let limits = self.core.limits;
        loop {
            let Some(c) = self.core.conns.get_mut(index) else {
                return;
            };
            let key = c.key(index);
            if c.pending() >= limits.pause_at {
                // Its own output is over budget: not read until that drains (see flush_one).
                if !c.has(flag::PAUSED) {
                    c.set(flag::PAUSED, true);
                    self.core.metrics.reads_paused += 1;
                    debug!("pausing reads on {index}: {} bytes pending", c.pending());
                }
                return;
            }
            if budget == 0 {
                self.core.metrics.reads_deferred += 1;
                self.core.defer(key);
                return;
            }
            // Put the kept tail in front of the new bytes.
            let start = c.tail().len();
            if start > 0 {
                rbuf[..start].copy_from_slice(c.tail());
                c.set_tail(&[]);
            }
            if start > 0 && tail_first {
                // After a pause the tail may hold whole requests left unanswered. Serve them
                // before reading, so that more is read only behind an incomplete unit (a request
                // head, a frame header, a control frame): the tail never holds more than one
                // read's worth plus one request head and its body (`POST /api`, at most 64 KiB).
                tail_first = false;
                let used = self.consume(key, &mut rbuf[..start]);
                self.keep_tail(key, &rbuf[used..start]);
                continue;
            }
            tail_first = false;
            debug_assert!(
                start <= READ_BUDGET + handshake::MAX_HEAD + handshake::MAX_BODY,
                "bug: a tail of {start} bytes"
            );
            let room = (rbuf.len() - start).min(budget);
            let n = match c.stream.read(&mut rbuf[start..start + room]) {
                Ok(0) => {
                    // FIN: whatever the phase, the peer is gone.
                    self.drop_conn(key, Departure::Left);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if start > 0 {
                        c.set_tail(&rbuf[..start]);
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    if start > 0 {
                        c.set_tail(&rbuf[..start]);
                    }
                    continue;
                }
                Err(e) => {
                    debug!("read on {index}: {e}");
                    self.drop_conn(key, Departure::Left);
                    return;
                }
            };
            budget -= n;
            self.core.metrics.bytes_received += n as u64;
            let len = start + n;
            let used = self.consume(key, &mut rbuf[..len]);
            self.keep_tail(key, &rbuf[used..len]);
            // A short read drained the socket; the next arrival is a new edge.
            if n < room && !drain {
                return;
            }
        }
    }

    fn keep_tail(&mut self, key: ConnKey, rest: &[u8]) {
        if !rest.is_empty() {
            if let Some(c) = self.core.conn_mut(key) {
                c.set_tail(rest);
            }
        }
    }

    /// Processes `buf` for the connection; returns the bytes used.
    fn consume(&mut self, key: ConnKey, buf: &mut [u8]) -> usize {
        let mut used = 0;
        loop {
            let Some(c) = self.core.conn(key) else {
                return buf.len();
            };
            let step = match c.phase {
                // Requests are answered only while the answers stay within the output budget; the
                // rest waits in the tail, and the connection is paused until they drain.
                Phase::AwaitingRequest { .. } if c.pending() >= self.core.limits.pause_at => {
                    return used
                }
                Phase::AwaitingRequest { .. } => self.handle_request(key, &mut buf[used..]),
                Phase::Open { .. } => self.handle_frames(key, &mut buf[used..]),
                Phase::ClosingByUs { peer: Some(_), .. } => self.await_close(key, &mut buf[used..]),
                // Closing: nothing more from this peer is acted upon.
                _ => buf.len() - used,
            };
            used += step;
            if step == 0 || used == buf.len() {
                return used;
            }
        }
    }

    /// After our Close: skips frames until the peer's Close, then ends the
    /// connection (its answer is all we waited for). Returns the bytes used.
    fn await_close(&mut self, key: ConnKey, buf: &mut [u8]) -> usize {
        let c = &mut self.core.conns[key.index as usize];
        let Phase::ClosingByUs { peer, .. } = &mut c.phase else {
            unreachable!("bug: await_close outside ClosingByUs")
        };
        let ws = peer.as_mut().expect("bug: no decoder kept");
        let mut used = 0;
        loop {
            match ws.read(&mut buf[used..]) {
                Ok((_, Some(Event::Close { .. }))) => {
                    *peer = None;
                    if let Some(s) = self.core.shutdown.as_mut() {
                        s.answered += 1;
                    }
                    self.core.doomed.push(key);
                    return buf.len();
                }
                Ok((0, None)) => return used,
                Ok((n, _)) => used += n,
                Err(_) => {
                    *peer = None;
                    return buf.len();
                }
            }
        }
    }

    /// One HTTP request head at the start of `buf`; returns bytes used (0: need more).
    fn handle_request(&mut self, key: ConnKey, buf: &mut [u8]) -> usize {
        let (mut req, mut len) = match handshake::parse(buf) {
            Ok(Decoded::Done(r)) => r,
            Ok(Decoded::NeedMore) => return 0,
            Err(e) => {
                self.core.metrics.handshake_failures += 1;
                debug!("bad request on {}: {e:?}", key.index);
                self.core.answer_and_close(key, &handshake::refusal(e));
                return buf.len();
            }
        };
        // A body the service asked for (bounded by MAX_BODY): wait for all of it, under the
        // handshake deadline, and hand it up with the head.
        if let Some(n) = req
            .content_length
            .filter(|&n| req.has_body && n <= self.svc.body_limit(&req).min(handshake::MAX_BODY))
        {
            if buf.len() < len + n {
                return 0;
            }
            req.body = &buf[len..len + n];
            req.has_body = false;
            len += n;
        }
        let peer = self.core.conns[key.index as usize]
            .stream
            .peer_addr()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip().to_canonical());
        let Running { core, svc } = self;
        let answer = svc.handle_request(&mut Io { core }, key, peer, &req);
        self.settle();
        match answer {
            Answer::Respond(bytes, keep) => {
                self.core.metrics.http_requests += 1;
                if keep == KeepAlive::Yes && req.keep_alive && !req.has_body {
                    self.core.send_bytes(key, &bytes);
                    let deadline = self.core.tick32() + self.core.limits.handshake_ticks;
                    if let Some(c) = self.core.conn_mut(key) {
                        c.phase = Phase::AwaitingRequest { deadline };
                    }
                    self.core.arm(key, deadline);
                    len
                } else {
                    self.core.answer_and_close(key, &bytes);
                    buf.len()
                }
            }
            Answer::Later => {
                self.core.metrics.http_requests += 1;
                let deadline = self.core.tick32() + self.core.limits.handshake_ticks;
                if let Some(c) = self.core.conn_mut(key) {
                    c.phase = Phase::AwaitingAnswer { deadline };
                }
                self.core.arm(key, deadline);
                buf.len()
            }
            Answer::Upgrade(opening) => match handshake::check_upgrade(&req) {
                Err(e) => {
                    self.core.metrics.handshake_failures += 1;
                    debug!("refused upgrade on {}: {e:?}", key.index);
                    self.core.answer_and_close(key, &handshake::refusal(e));
                    buf.len()
                }
                Ok(accept) => {
                    // RFC 7692 §7.1: accept the first permessage-deflate offer we can, if on.
                    let agreed = self
                        .core
                        .limits
                        .deflate
                        .and_then(|_| deflate::negotiate(req.extension_lines()));
                    let extensions = agreed.map(|a| a.response());
                    let mut answer = handshake::switching_protocols(&accept, extensions.as_deref());
                    if let Some(protocol) = S::subprotocol(&opening) {
                        answer = handshake::with_subprotocol(answer, protocol);
                    }
                    self.core.send_bytes(key, &answer);
                    self.open(key, peer, opening, agreed);
                    len
                }
            },
        }
    }

    /// The upgrade succeeded: the service attaches the connection to its endpoint.
    fn open(
        &mut self,
        key: ConnKey,
        peer: IpAddr,
        opening: S::Opening,
        deflate: Option<Agreement>,
    ) {
        let Running { core, svc } = self;
        let endpoint = svc.handle_open(&mut Io { core }, key, peer, opening);
        self.core.websockets += 1;
        let tick = self.core.tick32();
        let ping = self.core.limits.ping_ticks;
        let max_message = self.core.limits.max_message_bytes;
        if deflate.is_some() {
            self.core.metrics.deflate_negotiated += 1;
        }
        let Some(c) = self.core.conn_mut(key) else {
            return;
        };
        let ws = WebSocket::new(Role::Server, max_message);
        let ws = match deflate {
            Some(a) => {
                c.set(flag::DEFLATE, true);
                c.set(flag::SMALL_WINDOW, a.small_window());
                ws.with_deflate()
            }
            None => ws,
        };
        c.phase = Phase::Open { ws, endpoint };
        c.progress = tick;
        debug!("connection {} open on {endpoint:?}", key.index);
        // The handshake deadline's entry stays the live one when it comes
        // first: on firing it finds the connection open and re-arms for the
        // heartbeat. One entry per connection, not two (density).
        if c.timer_due > tick + ping {
            self.core.arm(key, tick + ping);
        }
        self.settle();
    }

    /// Decodes frames at the start of `buf`; returns the bytes used.
    fn handle_frames(&mut self, key: ConnKey, buf: &mut [u8]) -> usize {
        let tick = self.core.tick32();
        let c = &mut self.core.conns[key.index as usize];
        let Phase::Open { ws, endpoint } = std::mem::replace(&mut c.phase, Phase::Busy) else {
            unreachable!("bug: handle_frames outside Open")
        };
        let mut ws = ws;
        let mut endpoint = endpoint;
        c.progress = tick;
        c.set(flag::PINGED, false);
        let mut used = 0;
        let mut outcome = Ok(());
        // RFC 6455 §5.5.3: "If an endpoint receives a Ping frame and has not yet sent Pong frame(s)
        // in response to previous Ping frame(s), the endpoint MAY elect to send a Pong frame for
        // only the most recently processed Ping frame." The first pings of a read are answered one
        // by one (clients and Autobahn 2.10 expect a pong per ping); past PONGS_PER_READ, only the
        // latest of the rest is, so a read of pings costs at most PONGS_PER_READ + 1 pongs.
        let mut pong = [0u8; 125];
        let mut pong_len: Option<usize> = None;
        let mut pings = 0usize;
        let max = ws.max_message();
        while used < buf.len() {
            match ws.read(&mut buf[used..]) {
                Ok((0, None)) => break,
                Ok((n, event)) => {
                    used += n;
                    let stop = match event {
                        None => None,
                        Some(Event::Ping(payload)) => {
                            pings += 1;
                            if pings <= PONGS_PER_READ {
                                self.core.send_frame(key, OpCode::Pong, payload);
                            } else {
                                if pong_len.is_some() {
                                    self.core.metrics.pongs_coalesced += 1;
                                }
                                pong[..payload.len()].copy_from_slice(payload);
                                pong_len = Some(payload.len());
                            }
                            None
                        }
                        Some(Event::Pong(_)) => None,
                        // A pong owed goes out before whatever the message makes us send: only
                        // pings with nothing sent between them are coalesced.
                        Some(Event::Text(text)) => {
                            if let Some(n) = pong_len.take() {
                                self.core.send_frame(key, OpCode::Pong, &pong[..n]);
                            }
                            self.message(key, &mut endpoint, Message::Text(text))
                        }
                        Some(Event::Binary(data)) => {
                            if let Some(n) = pong_len.take() {
                                self.core.send_frame(key, OpCode::Pong, &pong[..n]);
                            }
                            self.message(key, &mut endpoint, Message::Binary(data))
                        }
                        Some(Event::Compressed(kind, payload)) => {
                            if let Some(n) = pong_len.take() {
                                self.core.send_frame(key, OpCode::Pong, &pong[..n]);
                            }
                            // The one inflater, out of the core while the service has the message.
                            let mut inflater = self.core.inflater.take().unwrap_or_default();
                            let stop = match inflate_message(&mut inflater, kind, payload, max) {
                                Ok(event) => {
                                    let m = &mut self.core.metrics;
                                    m.inflate_bytes_in += payload.len() as u64;
                                    let message = match event {
                                        Event::Text(t) => Message::Text(t),
                                        Event::Binary(b) => Message::Binary(b),
                                        _ => unreachable!("bug: inflated to a non-data event"),
                                    };
                                    m.inflate_bytes_out += match message {
                                        Message::Text(t) => t.len(),
                                        Message::Binary(b) => b.len(),
                                    }
                                        as u64;
                                    self.message(key, &mut endpoint, message)
                                }
                                Err(e) => {
                                    self.core.metrics.protocol_errors += 1;
                                    debug!("compressed message on {}: {e}", key.index);
                                    Some(Stop::Fail(CloseCode::from(&e), "bad compressed message"))
                                }
                            };
                            self.core.inflater = Some(inflater);
                            stop
                        }
                        Some(Event::Close { code, .. }) => {
                            if let Some(n) = pong_len.take() {
                                self.core.send_frame(key, OpCode::Pong, &pong[..n]);
                            }
                            // §5.5.1: answer with a Close, echoing the code; then we close TCP first.
                            let mut payload = [0u8; 125];
                            let n = match code {
                                Some(code) => write_close_payload(code, "", &mut payload),
                                None => 0,
                            };
                            self.core.send_frame(key, OpCode::Close, &payload[..n]);
                            Some(Stop::Echoed)
                        }
                    };
                    if let Some(stop) = stop {
                        outcome = Err(stop);
                        break;
                    }
                    if !self.core.closing.is_empty() {
                        break; // the service closed someone (maybe this one): settle first
                    }
                }
                Err(e) => {
                    self.core.metrics.protocol_errors += 1;
                    debug!("protocol error on {}: {e}", key.index);
                    outcome = Err(Stop::Fail(CloseCode::from(&e), "protocol error"));
                    break;
                }
            }
        }
        if let Some(n) = pong_len {
            self.core.send_frame(key, OpCode::Pong, &pong[..n]);
        }
        // The service may have re-attached the connection meanwhile (Io::set_endpoint).
        if let Some(e) = self.core.reattached.take() {
            endpoint = e;
        }
        let c = &mut self.core.conns[key.index as usize];
        c.phase = Phase::Open { ws, endpoint };
        let used = match outcome {
            Ok(()) => used,
            Err(Stop::Fail(code, reason)) => {
                self.fail(key, code, reason, Departure::Left);
                buf.len()
            }
            Err(Stop::Echoed) => {
                self.detach(key, endpoint, Departure::Left);
                let deadline = self.core.tick32() + self.core.limits.close_ticks;
                self.core.conns[key.index as usize].phase = Phase::Finishing { deadline };
                self.core.arm(key, deadline);
                buf.len()
            }
        };
        self.settle();
        used
    }

    /// Hands one data message to the service.
    fn message(
        &mut self,
        key: ConnKey,
        endpoint: &mut S::Endpoint,
        message: Message<'_>,
    ) -> Option<Stop> {
        self.core.metrics.messages_received += 1;
        self.core.reading = Some(key);
        let Running { core, svc } = self;
        let result = svc.handle_message(&mut Io { core }, key, *endpoint, message);
        self.core.reading = None;
        if let Some(e) = self.core.reattached.take() {
            *endpoint = e;
        }
        match result {
            Ok(()) => None,
            Err((code, reason)) => {
                if code != CloseCode::Normal && code != CloseCode::Away {
                    self.core.metrics.protocol_errors += 1;
                }
                Some(Stop::Fail(code, reason))
            }
        }
    }
}
