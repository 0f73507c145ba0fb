//! Many client WebSocket connections on one `mio` loop.
//!
//! The engine owns the sockets and speaks the protocol with Wisp's own client
//! side (`wisp::protocol::client` for the upgrade and masked frames,
//! `WebSocket` in `Role::Client` to decode what servers send). Scenarios own
//! the timing and the meaning of messages: they open connections, send, and
//! get every data message through a callback while the engine polls, plus a
//! list of [`Note`]s (opened, failed, closed) to act on after each poll.
//!
//! Reading follows the server's design: one shared receive buffer per loop,
//! and a connection keeps bytes only when a frame is incomplete, so 19,000
//! idle connections cost the generator almost nothing beyond their sockets.
//!
//! With [`Deflate::Offer`] every upgrade offers permessage-deflate (RFC 7692)
//! without context takeover either way, the server's answer is checked, and
//! compressed messages are inflated by one shared `wisp::protocol::deflate`
//! inflater (reset per message, as the server's is) before the scenario sees
//! them. What the generator sends stays uncompressed (§6 lets any message go
//! uncompressed), so the server's inbound side is the same in both modes.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};
use wisp::protocol::client::{check_response, encode_masked, request, MaskRng};
use wisp::protocol::deflate::{Inflater, EXTENSION};
use wisp::protocol::websocket::inflate_message;
use wisp::protocol::{Decoded, Event, OpCode, Role, WebSocket};

use crate::sys::now_ns;

/// Index of a connection in the engine; reused after the connection ends, so
/// scenarios key their state by the `tag` they chose, not by this.
pub type ConnId = usize;

/// Largest message the generator accepts from a server (a `welcome` carrying
/// a full history can be large).
const MAX_MESSAGE: usize = 16 << 20;
/// The shared receive buffer; grows only if a single frame is larger.
const RECV_BUF: usize = 256 * 1024;

/// Whether upgrades offer permessage-deflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deflate {
    /// No `Sec-WebSocket-Extensions` header: the server must not compress.
    Off,
    /// Offer [`OFFER`]; inflate what the server sends compressed.
    Offer,
}

/// The offer: no context takeover either way, so one inflater reset per
/// message serves every connection (what Wisp answers whatever is offered,
/// and what `ws` accepts when asked), and a server may share one compressed
/// frame among its recipients.
pub const OFFER: &str =
    "permessage-deflate; client_no_context_takeover; server_no_context_takeover";

#[derive(Debug)]
enum Phase {
    /// TCP connect in progress; the upgrade request waits in `out`.
    Connecting {
        key: [u8; 24],
    },
    /// Request sent, waiting for `101 Switching Protocols`.
    AwaitingResponse {
        key: [u8; 24],
    },
    Open,
    /// We sent Close; waiting for the server's Close or EOF.
    Closing {
        deadline_ns: u64,
    },
}

struct Conn {
    stream: TcpStream,
    phase: Phase,
    ws: WebSocket,
    /// Bytes of an incomplete response or frame. Empty (no heap) when idle.
    tail: Vec<u8>,
    /// Output not yet accepted by the kernel, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    tag: u32,
    started_ns: u64,
}

/// Why a connection ended without our close handshake completing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Connect(String),
    Handshake(String),
    Protocol(String),
    /// The server closed first (EOF or its own Close frame).
    ClosedByServer,
    Timeout,
    Io(String),
}

impl Failure {
    /// A short key for counting failures by kind.
    pub fn key(&self) -> String {
        match self {
            Failure::Connect(e) => format!("connect: {e}"),
            Failure::Handshake(e) => format!("handshake: {e}"),
            Failure::Protocol(e) => format!("protocol: {e}"),
            Failure::ClosedByServer => "closed by server".into(),
            Failure::Timeout => "timeout".into(),
            Failure::Io(e) => format!("io: {e}"),
        }
    }
}

/// Something that happened to a connection during a poll.
#[derive(Debug)]
pub enum Note {
    /// The upgrade succeeded; `handshake_ns` since `connect` was called.
    Opened {
        id: ConnId,
        tag: u32,
        handshake_ns: u64,
    },
    /// Our close handshake completed; the connection is gone.
    Closed { tag: u32 },
    /// The connection is gone for another reason.
    Failed { tag: u32, why: Failure },
}

/// Byte and frame counters of the whole engine.
#[derive(Debug, Default, Clone, Copy)]
pub struct IoStats {
    /// Bytes read from the sockets: HTTP answers and whole frames, headers
    /// included (what the server put on the wire, TCP/IP headers aside).
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub frames_in: u64,
    pub pings: u64,
    /// Data messages that arrived compressed (RSV1) and were inflated.
    pub inflated: u64,
    /// Their payload bytes before and after inflating.
    pub inflated_from: u64,
    pub inflated_to: u64,
    /// Upgrades whose answer accepted our permessage-deflate offer.
    pub deflate_conns: u64,
}

pub struct Engine {
    poll: Poll,
    events: Events,
    conns: Slab<Conn>,
    rbuf: Vec<u8>,
    rng: MaskRng,
    /// The servers dialed, each with its `Host` header; a connection picks
    /// one by index (one room spread over several cluster nodes).
    targets: Vec<(SocketAddr, String)>,
    sources: Vec<Ipv4Addr>,
    notes: Vec<Note>,
    deflate: Deflate,
    /// Shared by every connection: the offer asks for no context takeover,
    /// so each message is a DEFLATE stream of its own.
    inflater: Inflater,
    pub stats: IoStats,
}

impl Engine {
    /// An engine dialing `targets` (at least one) from `sources` loopback
    /// addresses (127.0.0.1, 127.0.0.2, …), both chosen per connection by
    /// the caller; every upgrade offers permessage-deflate or not, as
    /// `deflate` says.
    pub fn new(targets: &[SocketAddr], sources: usize, deflate: Deflate) -> io::Result<Engine> {
        if targets.is_empty() {
            return Err(io::Error::other("bug: an engine needs a target"));
        }
        let sources = (1..=sources.clamp(1, 255))
            .map(|i| Ipv4Addr::new(127, 0, 0, i as u8))
            .collect();
        Ok(Engine {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            conns: Slab::new(),
            rbuf: vec![0; RECV_BUF],
            rng: MaskRng::from_os(),
            targets: targets.iter().map(|t| (*t, t.to_string())).collect(),
            sources,
            notes: Vec::new(),
            deflate,
            inflater: Inflater::new(),
            stats: IoStats::default(),
        })
    }

    /// Connections alive (in any phase).
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Starts a connection to `path` on target number `target` (modulo the
    /// number of targets) from source address number `source` (modulo the
    /// number of sources). The upgrade request is sent as soon as TCP
    /// connects; [`Note::Opened`] follows the server's 101.
    pub fn connect(
        &mut self,
        target: usize,
        path: &str,
        source: usize,
        tag: u32,
    ) -> io::Result<ConnId> {
        let (addr, host) = &self.targets[target % self.targets.len()];
        let addr = *addr;
        let sock = Socket::new(
            Domain::IPV4,
            Type::STREAM.nonblocking(),
            Some(Protocol::TCP),
        )?;
        sock.set_nodelay(true)?;
        let src = self.sources[source % self.sources.len()];
        if self.sources.len() > 1 || src != Ipv4Addr::LOCALHOST {
            // Let connect() pick the port per (source, destination) pair, not
            // bind() per source alone: otherwise one source address gives at
            // most ~28k connections in total, whatever the destination.
            let one: libc::c_int = 1;
            // SAFETY: valid fd, option value is a c_int living across the call.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&sock),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            sock.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())?;
        }
        match sock.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let mut stream = TcpStream::from_std(std::net::TcpStream::from(sock));
        let entry = self.conns.vacant_entry();
        let id = entry.key();
        self.poll.registry().register(
            &mut stream,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let key = self.rng.key();
        entry.insert(Conn {
            stream,
            phase: Phase::Connecting { key },
            ws: WebSocket::new(Role::Client, MAX_MESSAGE),
            tail: Vec::new(),
            out: upgrade_request(host, path, &key, self.deflate),
            out_pos: 0,
            tag,
            started_ns: now_ns(),
        });
        Ok(id)
    }

    /// Queues one masked frame for `id` without writing it (see [`Engine::flush`]).
    pub fn queue(&mut self, id: ConnId, opcode: OpCode, payload: &[u8]) {
        let mask = self.rng.mask();
        if let Some(c) = self.conns.get_mut(id) {
            encode_masked(&mut c.out, opcode, payload, mask);
        }
    }

    /// Sends one text message now (queue + flush: one `write` per message,
    /// as a real client sends).
    pub fn send_text(&mut self, id: ConnId, payload: &[u8]) {
        self.queue(id, OpCode::Text, payload);
        self.flush(id);
    }

    /// Writes what is queued for `id` until done or `WouldBlock`.
    pub fn flush(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if matches!(c.phase, Phase::Connecting { .. }) {
            return;
        }
        match write_out(c, &mut self.stats) {
            Ok(()) => {}
            Err(e) => {
                let tag = c.tag;
                self.remove(id);
                self.notes.push(Note::Failed {
                    tag,
                    why: Failure::Io(e.kind().to_string()),
                });
            }
        }
    }

    /// Starts our close handshake (status 1000); [`Note::Closed`] follows.
    pub fn close(&mut self, id: ConnId, timeout: Duration) {
        let mask = self.rng.mask();
        if let Some(c) = self.conns.get_mut(id) {
            encode_masked(&mut c.out, OpCode::Close, &1000u16.to_be_bytes(), mask);
            c.phase = Phase::Closing {
                deadline_ns: now_ns() + timeout.as_nanos() as u64,
            };
        }
        self.flush(id);
    }

    /// Drops every connection at once (no close handshake).
    pub fn drop_all(&mut self) {
        let ids: Vec<ConnId> = self.conns.iter().map(|(k, _)| k).collect();
        for id in ids {
            self.remove(id);
        }
    }

    /// Ends connections stuck connecting, upgrading or closing for longer
    /// than `handshake` (or past their close deadline). O(connections): call
    /// it a few times a second at most.
    pub fn reap(&mut self, handshake: Duration) {
        let now = now_ns();
        let limit = handshake.as_nanos() as u64;
        let stale: Vec<ConnId> = self
            .conns
            .iter()
            .filter_map(|(id, c)| match c.phase {
                Phase::Connecting { .. } | Phase::AwaitingResponse { .. }
                    if now.saturating_sub(c.started_ns) > limit =>
                {
                    Some(id)
                }
                Phase::Closing { deadline_ns } if now > deadline_ns => Some(id),
                _ => None,
            })
            .collect();
        for id in stale {
            let tag = self.conns[id].tag;
            self.remove(id);
            self.notes.push(Note::Failed {
                tag,
                why: Failure::Timeout,
            });
        }
    }

    /// What happened since the last call.
    pub fn take_notes(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.notes)
    }

    /// Waits up to `timeout` for readiness and handles it; every complete
    /// data message is given to `on_msg(tag, payload, arrival_ns)`.
    pub fn poll(
        &mut self,
        timeout: Duration,
        on_msg: &mut dyn FnMut(u32, &[u8], u64),
    ) -> io::Result<()> {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let ready: Vec<(ConnId, bool, bool)> = self
            .events
            .iter()
            .map(|e| {
                (
                    e.token().0,
                    e.is_writable() || e.is_error(),
                    e.is_readable() || e.is_read_closed() || e.is_error(),
                )
            })
            .collect();
        for (id, writable, readable) in ready {
            if !self.conns.contains(id) {
                continue;
            }
            if let Phase::Connecting { key } = self.conns[id].phase {
                let c = &mut self.conns[id];
                let err = match c.stream.take_error() {
                    Ok(Some(e)) | Err(e) => Some(e),
                    Ok(None) => None,
                };
                if let Some(e) = err {
                    let tag = c.tag;
                    self.remove(id);
                    self.notes.push(Note::Failed {
                        tag,
                        why: Failure::Connect(errno_name(&e)),
                    });
                    continue;
                }
                if c.stream.peer_addr().is_err() {
                    continue; // spurious: not connected yet
                }
                self.conns[id].phase = Phase::AwaitingResponse { key };
                self.flush(id);
                if !self.conns.contains(id) {
                    continue;
                }
            } else if writable {
                self.flush(id);
                if !self.conns.contains(id) {
                    continue;
                }
            }
            if readable {
                self.read_conn(id, on_msg);
            }
        }
        Ok(())
    }

    /// Reads `id` until `WouldBlock`, decoding as it goes.
    fn read_conn(&mut self, id: ConnId, on_msg: &mut dyn FnMut(u32, &[u8], u64)) {
        let Engine {
            conns,
            rbuf,
            rng,
            notes,
            stats,
            deflate,
            inflater,
            ..
        } = self;
        let c = &mut conns[id];
        let mut filled = c.tail.len();
        if filled > rbuf.len() {
            rbuf.resize(filled * 2, 0);
        }
        rbuf[..filled].copy_from_slice(&c.tail);
        c.tail = Vec::new();
        let mut end: Option<Result<(), Failure>> = None;
        let mut wrote = false;
        loop {
            if filled == rbuf.len() {
                rbuf.resize(rbuf.len() * 2, 0);
            }
            let n = match c.stream.read(&mut rbuf[filled..]) {
                Ok(0) => {
                    end = Some(match c.phase {
                        Phase::Closing { .. } => Ok(()),
                        _ => Err(Failure::ClosedByServer),
                    });
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    end = Some(match c.phase {
                        Phase::Closing { .. } => Ok(()),
                        _ => Err(Failure::Io(errno_name(&e))),
                    });
                    break;
                }
            };
            stats.bytes_in += n as u64;
            filled += n;
            let now = now_ns();
            let mut pos = 0;
            if let Phase::AwaitingResponse { key } = c.phase {
                match check_response(&rbuf[..filled], &key) {
                    Ok(Decoded::NeedMore) => continue,
                    Ok(Decoded::Done(len)) => {
                        match answered_deflate(&rbuf[..len], *deflate) {
                            Ok(false) => {}
                            Ok(true) => {
                                c.ws = WebSocket::new(Role::Client, MAX_MESSAGE).with_deflate();
                                stats.deflate_conns += 1;
                            }
                            Err(e) => {
                                end = Some(Err(Failure::Handshake(e)));
                                break;
                            }
                        }
                        pos = len;
                        c.phase = Phase::Open;
                        notes.push(Note::Opened {
                            id,
                            tag: c.tag,
                            handshake_ns: now.saturating_sub(c.started_ns),
                        });
                    }
                    Err(e) => {
                        end = Some(Err(Failure::Handshake(format!("{e:?}"))));
                        break;
                    }
                }
            }
            // Frames: one event per call; (0, None) means incomplete.
            loop {
                let (used, event) = match c.ws.read(&mut rbuf[pos..filled]) {
                    Ok(r) => r,
                    Err(e) => {
                        end = Some(Err(Failure::Protocol(format!("{e:?}"))));
                        break;
                    }
                };
                if used == 0 && event.is_none() {
                    break;
                }
                pos += used;
                match event {
                    None => {}
                    Some(Event::Text(s)) => {
                        stats.frames_in += 1;
                        on_msg(c.tag, s.as_bytes(), now);
                    }
                    Some(Event::Binary(b)) => {
                        stats.frames_in += 1;
                        on_msg(c.tag, b, now);
                    }
                    Some(Event::Ping(p)) => {
                        stats.pings += 1;
                        encode_masked(&mut c.out, OpCode::Pong, p, rng.mask());
                        wrote = true;
                    }
                    Some(Event::Pong(_)) => {}
                    // Only on a connection whose answer accepted our offer
                    // (`WebSocket::with_deflate`); elsewhere RSV1 is a
                    // protocol error, reported as such above.
                    Some(Event::Compressed(kind, payload)) => {
                        stats.frames_in += 1;
                        stats.inflated += 1;
                        stats.inflated_from += payload.len() as u64;
                        match inflate_message(inflater, kind, payload, MAX_MESSAGE) {
                            Ok(Event::Text(s)) => {
                                stats.inflated_to += s.len() as u64;
                                on_msg(c.tag, s.as_bytes(), now);
                            }
                            Ok(Event::Binary(b)) => {
                                stats.inflated_to += b.len() as u64;
                                on_msg(c.tag, b, now);
                            }
                            Ok(_) => unreachable!("bug: inflate_message gives text or binary"),
                            Err(e) => {
                                end = Some(Err(Failure::Protocol(format!("{e:?}"))));
                                break;
                            }
                        }
                    }
                    Some(Event::Close { .. }) => {
                        end = Some(match c.phase {
                            Phase::Closing { .. } => Ok(()),
                            _ => Err(Failure::ClosedByServer),
                        });
                        break;
                    }
                }
            }
            if end.is_some() {
                break;
            }
            rbuf.copy_within(pos..filled, 0);
            filled -= pos;
        }
        if end.is_none() {
            c.tail = rbuf[..filled].to_vec();
            if wrote {
                self.flush(id);
            }
            return;
        }
        let tag = c.tag;
        self.remove(id);
        self.notes.push(match end {
            Some(Ok(())) => Note::Closed { tag },
            Some(Err(why)) => Note::Failed { tag, why },
            None => unreachable!(),
        });
    }

    fn remove(&mut self, id: ConnId) {
        if self.conns.contains(id) {
            let mut c = self.conns.remove(id);
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }
}

/// The opening request, with our permessage-deflate offer when asked for.
fn upgrade_request(host: &str, path: &str, key: &[u8; 24], deflate: Deflate) -> Vec<u8> {
    let mut req = request(host, path, key);
    if deflate == Deflate::Offer {
        // `request` ends with the blank line; the offer goes before it.
        req.truncate(req.len() - 2);
        req.extend_from_slice(format!("Sec-WebSocket-Extensions: {OFFER}\r\n\r\n").as_bytes());
    }
    req
}

/// Whether the server's 101 (`head`, complete) accepted our offer: `Ok(true)`
/// for `permessage-deflate` with `server_no_context_takeover` (RFC 7692
/// §7.1.1.1: a server accepting an offer with it "MUST include" it), which is
/// what lets one inflater, reset per message, read every connection;
/// `Ok(false)` for no extension. Anything else (an extension we did not offer,
/// deflate with context takeover, two answers) is an error: we could not read
/// what the server sends.
fn answered_deflate(head: &[u8], deflate: Deflate) -> Result<bool, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    if !matches!(resp.parse(head), Ok(httparse::Status::Complete(_))) {
        return Err("bug: the checked answer does not parse".into());
    }
    let mut accepted = false;
    for h in resp
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
    {
        let value = std::str::from_utf8(h.value).map_err(|_| "extensions: not UTF-8")?;
        for ext in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let mut parts = ext.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            if deflate == Deflate::Off || !name.eq_ignore_ascii_case(EXTENSION) || accepted {
                return Err(format!("extension not offered: {ext}"));
            }
            let no_takeover = parts.any(|p| p.eq_ignore_ascii_case("server_no_context_takeover"));
            if !no_takeover {
                return Err(format!("deflate with server context takeover: {ext}"));
            }
            accepted = true;
        }
    }
    Ok(accepted)
}

/// Writes `c.out[c.out_pos..]` until done or `WouldBlock`.
fn write_out(c: &mut Conn, stats: &mut IoStats) -> io::Result<()> {
    while c.out_pos < c.out.len() {
        match c.stream.write(&c.out[c.out_pos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                c.out_pos += n;
                stats.bytes_out += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    c.out.clear();
    c.out_pos = 0;
    if c.out.capacity() > 64 * 1024 {
        c.out = Vec::new();
    }
    Ok(())
}

/// `ECONNREFUSED`-style name of an OS error, for counting failures by kind.
fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ECONNRESET) => "ECONNRESET".into(),
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL".into(),
        Some(libc::EMFILE) => "EMFILE".into(),
        Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
        Some(libc::EPIPE) => "EPIPE".into(),
        _ => e.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use wisp::protocol::deflate::{negotiate, Deflater};
    use wisp::protocol::frame::{encode_header, Fin, MAX_HEADER};
    use wisp::protocol::handshake::{self, check_upgrade, switching_protocols};

    /// What Wisp's own server side makes of our request: the agreement, if any.
    fn server_answer(req: &[u8]) -> Vec<u8> {
        let Ok(Decoded::Done((parsed, _))) = handshake::parse(req) else {
            panic!("request does not parse")
        };
        let accept = check_upgrade(&parsed).unwrap();
        let agreed = negotiate(parsed.extension_lines()).map(|a| a.response());
        switching_protocols(&accept, agreed.as_deref())
    }

    #[test]
    fn deflate_offer_is_accepted_by_wisp_and_its_answer_by_us() {
        let key = MaskRng::from_os().key();
        let offer = upgrade_request("127.0.0.1:1", "/ws/r/c", &key, Deflate::Offer);
        let resp = server_answer(&offer);
        assert_eq!(check_response(&resp, &key), Ok(Decoded::Done(resp.len())));
        assert_eq!(answered_deflate(&resp, Deflate::Offer), Ok(true));

        let plain = upgrade_request("127.0.0.1:1", "/ws/r/c", &key, Deflate::Off);
        assert_eq!(plain, request("127.0.0.1:1", "/ws/r/c", &key));
        let resp = server_answer(&plain);
        assert_eq!(answered_deflate(&resp, Deflate::Off), Ok(false));
        // A server that declines (wisp --no-deflate, the floor) leaves the
        // connection plain.
        assert_eq!(answered_deflate(&resp, Deflate::Offer), Ok(false));
    }

    #[test]
    fn answers_we_could_not_read_fail_the_handshake() {
        let head = |ext: &str| {
            format!("HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Extensions: {ext}\r\n\r\n")
                .into_bytes()
        };
        // Not offered at all.
        assert!(answered_deflate(&head(OFFER), Deflate::Off).is_err());
        // Context takeover kept by the server: one shared inflater cannot read it.
        assert!(answered_deflate(&head("permessage-deflate"), Deflate::Offer).is_err());
        assert!(answered_deflate(&head("x-webkit-deflate-frame"), Deflate::Offer).is_err());
        assert!(answered_deflate(
            &head("permessage-deflate; server_no_context_takeover, permessage-deflate; server_no_context_takeover"),
            Deflate::Offer
        )
        .is_err());
        // What ws answers (parameter order and case are free).
        assert_eq!(
            answered_deflate(
                &head("permessage-deflate; Server_No_Context_Takeover; client_no_context_takeover"),
                Deflate::Offer
            ),
            Ok(true)
        );
    }

    /// One unmasked server frame.
    fn frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut h = [0u8; MAX_HEADER];
        let n = encode_header(&mut h, Fin::Final, opcode, payload.len() as u64, None);
        [&h[..n], payload].concat()
    }

    /// A one-connection server on a thread: answers the upgrade as Wisp
    /// would, sends `frames` (built once the offer is known) and waits.
    fn serve(frames: impl FnOnce(bool) -> Vec<u8> + Send + 'static) -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut req = Vec::new();
            while !req.ends_with(b"\r\n\r\n") {
                r.read_until(b'\n', &mut req).unwrap();
            }
            let resp = server_answer(&req);
            let offered = resp.windows(18).any(|w| w == b"permessage-deflate");
            s.write_all(&resp).unwrap();
            s.write_all(&frames(offered)).unwrap();
            // Hold the connection until the client goes.
            let _ = r.read(&mut [0u8; 1]);
        });
        addr
    }

    /// Connects once with `deflate` and returns the messages received.
    fn receive(addr: SocketAddr, deflate: Deflate, want: usize) -> (Vec<String>, IoStats) {
        let mut eng = Engine::new(&[addr], 1, deflate).unwrap();
        eng.connect(0, "/ws/r/c", 0, 7).unwrap();
        let mut got = Vec::new();
        let deadline = now_ns() + 10_000_000_000;
        while got.len() < want && now_ns() < deadline {
            eng.poll(Duration::from_millis(50), &mut |tag, p, _| {
                assert_eq!(tag, 7);
                got.push(String::from_utf8(p.to_vec()).unwrap());
            })
            .unwrap();
            for n in eng.take_notes() {
                assert!(!matches!(n, Note::Failed { .. }), "{n:?}");
            }
        }
        (got, eng.stats)
    }

    #[test]
    fn compressed_messages_are_inflated_with_wisps_inflater() {
        let chat = "the build is green again, deploy after lunch? ".repeat(12);
        let text = chat.clone();
        let addr = serve(move |offered| {
            assert!(offered, "the generator did not offer deflate");
            let mut buf = Vec::new();
            let mut out = frame(OpCode::Text, b"small, sent plain");
            let z = Deflater::new(2)
                .frame(OpCode::Text, text.as_bytes(), &mut buf)
                .expect("compresses")
                .to_vec();
            out.extend_from_slice(&z);
            out
        });
        let (got, stats) = receive(addr, Deflate::Offer, 2);
        assert_eq!(got, ["small, sent plain".to_string(), chat.clone()]);
        assert_eq!(stats.deflate_conns, 1);
        assert_eq!(stats.inflated, 1);
        assert_eq!(stats.inflated_to, chat.len() as u64);
        assert!(stats.inflated_from < chat.len() as u64 / 4);
        // What was read is the answer plus both frames, headers included.
        assert!(stats.bytes_in > stats.inflated_from + 17);
    }

    #[test]
    fn without_the_offer_rsv1_is_a_protocol_error() {
        let addr = serve(|offered| {
            assert!(!offered);
            let mut buf = Vec::new();
            Deflater::new(2)
                .frame(OpCode::Text, "x y z ".repeat(100).as_bytes(), &mut buf)
                .unwrap()
                .to_vec()
        });
        let mut eng = Engine::new(&[addr], 1, Deflate::Off).unwrap();
        eng.connect(0, "/ws/r/c", 0, 1).unwrap();
        let deadline = now_ns() + 10_000_000_000;
        let mut failed = None;
        while failed.is_none() && now_ns() < deadline {
            eng.poll(Duration::from_millis(50), &mut |_, _, _| {
                panic!("a message got through")
            })
            .unwrap();
            failed = eng.take_notes().into_iter().find_map(|n| match n {
                Note::Failed { why, .. } => Some(why),
                _ => None,
            });
        }
        assert!(matches!(failed, Some(Failure::Protocol(_))), "{failed:?}");
    }
}
