//! The reactor: one `mio::Poll`, one thread, every connection.
//!
//! Owns the sockets, the slab of `Conn`s, the one shared receive buffer, the per-turn output cork,
//! the timer wheel, the turn, every budget a peer can spend of them, and permessage-deflate's one
//! compressor and one inflater (no connection keeps compression state: `protocol::deflate`). It is the only module that
//! reads clocks and touches sockets. It moves bytes and nothing else: what it decodes (a request head,
//! a data message, a close, a due deadline, a wake-up from another thread) it hands to a [`Service`]
//! through the one interface in [`service`], and it takes back what to write, to whom, and what to
//! close. It imports nothing from the chat, the HTTP answers or the cluster.
//!
//! A turn: poll → accept, read every ready socket within its budget (decode, hand up, queue output in
//! the cork) → read again the connections left over from the last turn → fire due deadlines → write
//! each connection with output once, with a vectored write → close what must close.
//!
//! # Budgets
//!
//! - **Reads**: at most [`READ_BUDGET`] bytes per connection per turn. A connection with more waiting
//!   goes on the ready list and is read again next turn, after everyone else (Redis reads 16 KiB per
//!   client per event for the same reason): one flooder cannot hold the loop.
//! - **Output, in every phase**: a connection whose pending output (this turn's and its backlog) has
//!   reached half of `--max-outbound-bytes` is not read until it drains below a quarter: its own
//!   requests (HTTP answers, echoes, pongs, `error` events) cannot grow its queue, TCP backpressure
//!   does the rest. Output others cause (room broadcasts) past `--max-outbound-bytes` is the
//!   slow-consumer rule: close 1008 (SPEC §4.3).
//! - **Control frames**: at most `PONGS_PER_READ` (16) pongs per read, then one for the latest ping
//!   (RFC 6455 §5.5.3).
//! - **The turn**: the cork is written out early once it holds `CORK_FLUSH` (8 MiB) bytes, so a turn's
//!   output is bounded and every offset in it fits 32 bits.
//! - **Deadlines measure lack of progress**: an HTTP answer or a close still being written is not cut
//!   by its deadline while the peer keeps reading.

pub mod conn;
pub(crate) mod cork;
mod input;
pub mod listener;
mod memory;
mod output;
pub mod service;
pub mod timer;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::config::{Config, DeflateConfig, CLOSE_TIMEOUT};
use crate::metrics::{Metrics, Transport};
use crate::protocol::deflate::{Deflater, Inflater};
use crate::protocol::{CloseCode, OpCode};
use conn::{flag, Conn, Phase, NONE};
use cork::Cork;
use timer::{Tick, Wheel, TICK};

pub use conn::ConnKey;
pub use service::{Answer, Departure, Io, KeepAlive, Message, Service, Shared};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
/// The service's waker ([`Reactor::waker`]): another thread has something for it.
const WAKER: Token = Token(usize::MAX - 3);

/// Size of the one receive buffer shared by every connection.
const RECV_BUFFER: usize = 256 * 1024;

/// Bytes read from one connection per turn before the others get their turn. 64 KiB holds a
/// largest default message and its header in one read; Redis reads 16 KiB per client per event.
pub const READ_BUDGET: usize = 64 * 1024;

/// Cork nodes (one per frame per recipient) that make the reactor write out early, like
/// [`cork::CORK_FLUSH`] bytes do: a turn that fans a burst out to a large room stays bounded.
const CORK_FLUSH_NODES: usize = 1 << 20;

/// Pings answered one by one in a read; later ones in the same read get one pong, for the latest.
const PONGS_PER_READ: usize = 16;

/// How often the reactor checks whether the allocator holds enough free memory to give back.
const HOUSEKEEPING: Duration = Duration::from_secs(10);

/// What a timer entry is for.
#[derive(Debug, Clone, Copy)]
enum Deadline<T> {
    /// When to check a connection: handshake deadline, ping, idle or close timeout.
    Conn(ConnKey),
    /// When one of the service's deadlines is due.
    Service(T),
    /// Every [`HOUSEKEEPING`]: give memory freed after a burst back to the kernel.
    Housekeeping,
}

/// The limits the loop enforces, in its own units.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    max_connections_per_ip: u32,
    max_message_bytes: usize,
    /// `--max-outbound-bytes`: past this, an open WebSocket is a slow consumer.
    max_outbound: usize,
    /// Pending output at which a connection is no longer read.
    pause_at: usize,
    /// Pending output below which a paused connection is read again.
    resume_at: usize,
    ping_ticks: u32,
    idle_ticks: u32,
    handshake_ticks: u32,
    close_ticks: u32,
    /// permessage-deflate; `None` under `--no-deflate`.
    deflate: Option<DeflateConfig>,
}

impl Limits {
    fn new(cfg: &Config) -> Limits {
        let ticks = |d: Duration| (d.as_millis() / TICK.as_millis()) as u32;
        // Half the slow-consumer cap: whatever one more read makes a connection owe itself (a
        // budget of echoes, a message escaped up to 6×, one HTTP answer) still fits under the cap.
        let pause_at = (cfg.max_outbound_bytes / 2).max(READ_BUDGET);
        Limits {
            max_connections: cfg.max_connections,
            max_connections_per_ip: cfg.max_connections_per_ip,
            max_message_bytes: cfg.max_message_bytes,
            max_outbound: cfg.max_outbound_bytes,
            pause_at,
            resume_at: pause_at / 2,
            ping_ticks: ticks(cfg.ping_interval),
            idle_ticks: ticks(cfg.idle_timeout),
            handshake_ticks: ticks(cfg.handshake_timeout),
            close_ticks: ticks(CLOSE_TIMEOUT),
            deflate: cfg.deflate,
        }
    }
}

/// A graceful shutdown under way (SPEC §6).
#[derive(Debug, Clone, Copy)]
struct Shutdown {
    /// Leave by then whether or not every peer answered.
    by: Instant,
    /// Open WebSockets sent a 1001.
    peers: usize,
    /// Of those, the ones whose Close came back.
    answered: usize,
}

/// The transport's state: everything but the poller, the receive buffer and the service.
pub struct Core<S: Service> {
    limits: Limits,
    conns: Slab<Conn<S::Endpoint>>,
    cork: Cork,
    wheel: Wheel<Deadline<S::Timer>>,
    metrics: Metrics,
    /// Connections per peer address, kept only under `--max-connections-per-ip`.
    per_ip: HashMap<IpAddr, u32>,
    /// The address each connection counts against, by slab index (kept here,
    /// not asked of the socket at close: a reset socket has no peer address).
    ip_of: HashMap<u32, IpAddr>,
    /// Connections to drop at the end of the turn (after their output is written).
    doomed: Vec<ConnKey>,
    /// Closes the service asked for during a call, applied when the call returns.
    closing: Vec<(ConnKey, CloseCode, &'static str)>,
    /// Connections to read next turn, after that turn's events: their budget ran out, or they were
    /// paused and have drained. Each is flagged [`flag::READY`] while listed.
    ready: Vec<ConnKey>,
    /// Connections whose drained output the service is waiting to hear of.
    drained: Vec<ConnKey>,
    /// Deadlines due this turn, reused so firing timers allocates nothing.
    fired: Vec<(Tick, Deadline<S::Timer>)>,
    next_gen: u32,
    websockets: usize,
    started: Instant,
    /// This turn's clock readings.
    now: Instant,
    tick: Tick,
    wall: u64,
    shutdown: Option<Shutdown>,
    /// The connection whose message the service is handling (its phase is `Busy` meanwhile).
    reading: Option<ConnKey>,
    /// An endpoint the service gave the connection being read, applied when the call returns.
    reattached: Option<S::Endpoint>,
    /// permessage-deflate's one compressor, for every connection that negotiated it (no context
    /// takeover: `protocol::deflate`). `None` under `--no-deflate`.
    deflater: Option<Deflater>,
    /// Where the compressor builds a frame. Kept at most [`ZBUF_KEEP`] bytes between messages.
    zbuf: Vec<u8>,
    /// The one inflater, made at the first compressed message and taken out while in use.
    inflater: Option<Box<Inflater>>,
}

/// Capacity of `Core::zbuf` kept after a large message.
const ZBUF_KEEP: usize = 64 * 1024;

/// The bound daemon, before it serves.
pub struct Reactor {
    poll: Poll,
    listener: TcpListener,
    signals: signal_hook_mio::v1_0::Signals,
    local: SocketAddr,
    limits: Limits,
}

impl Reactor {
    /// Binds the listener and sets up signals; nothing is served until [`Reactor::run`].
    pub fn bind(cfg: &Config) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let mut listener = listener::bind(cfg.bind)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = signal_hook_mio::v1_0::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let local = listener.local_addr()?;
        Ok(Reactor {
            poll,
            listener,
            signals,
            local,
            limits: Limits::new(cfg),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A waker for another thread: each wake makes the loop call [`Service::handle_wake`]. Only one
    /// may exist.
    pub fn waker(&self) -> io::Result<Waker> {
        Waker::new(self.poll.registry(), WAKER)
    }

    /// Serves until SIGINT or SIGTERM, then shuts down gracefully (SPEC §6): stop accepting, close
    /// 1001 to every peer, wait up to 5 s for their answers, return.
    pub fn run<S: Service>(self, service: S) -> io::Result<()> {
        let now = Instant::now();
        let mut running = Running {
            core: Core {
                limits: self.limits,
                conns: Slab::new(),
                cork: Cork::default(),
                wheel: Wheel::new(now),
                metrics: Metrics::default(),
                per_ip: HashMap::new(),
                ip_of: HashMap::new(),
                doomed: Vec::new(),
                closing: Vec::new(),
                ready: Vec::new(),
                drained: Vec::new(),
                fired: Vec::new(),
                next_gen: 0,
                websockets: 0,
                started: now,
                now,
                tick: 0,
                wall: wall_micros(),
                shutdown: None,
                reading: None,
                reattached: None,
                deflater: self.limits.deflate.map(|d| Deflater::new(d.level)),
                zbuf: Vec::new(),
                inflater: None,
            },
            svc: service,
        };
        running.core.arm_housekeeping();
        let mut poll = self.poll;
        let mut listener = Some(self.listener);
        let mut signals = self.signals;
        let mut rbuf = vec![0u8; RECV_BUFFER];
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = if running.core.ready.is_empty() {
                running.core.wheel.timeout(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            running.core.clock();
            // Served after this turn's events: whoever was cut short last turn comes last.
            let ready = std::mem::take(&mut running.core.ready);
            for event in events.iter() {
                match event.token() {
                    LISTENER => {
                        if let Some(l) = &listener {
                            running.core.accept(l, poll.registry());
                        }
                    }
                    WAKER => running.wake(),
                    SIGNALS => {
                        let mut stop = false;
                        for sig in signals.pending() {
                            if sig == signal_hook::consts::SIGHUP {
                                info!("SIGHUP ignored: wisp has nothing to reload (SIGTERM or SIGINT stops it)");
                            } else {
                                stop = true;
                            }
                        }
                        if stop && running.core.shutdown.is_none() {
                            if let Some(mut l) = listener.take() {
                                let _ = poll.registry().deregister(&mut l);
                            }
                            running.begin_shutdown();
                        }
                    }
                    Token(i) => {
                        // A FIN or error in the same edge as data must still be
                        // seen: then read on to EOF instead of stopping early.
                        let hup = event.is_read_closed() || event.is_error();
                        if event.is_readable() || hup {
                            running.on_readable(i, &mut rbuf, hup);
                        }
                        if event.is_writable() {
                            running.on_writable(i);
                        }
                    }
                }
            }
            for key in ready {
                if let Some(c) = running.core.conn_mut(key) {
                    c.set(flag::READY, false);
                    // Not known to be drained: read until the socket says so.
                    running.on_readable(key.index as usize, &mut rbuf, true);
                }
            }
            running.fire_timers();
            running.end_turn();
            if let Some(s) = running.core.shutdown {
                if running.core.conns.is_empty() || Instant::now() >= s.by {
                    running.svc.handle_exit();
                    info!(
                        "wisp stopped: {} of {} peers closed cleanly",
                        s.answered, s.peers
                    );
                    return Ok(());
                }
            }
        }
    }
}

/// The loop's state while it serves: the transport and the service on it.
struct Running<S: Service> {
    core: Core<S>,
    svc: S,
}

fn wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl<S: Service> Core<S> {
    fn clock(&mut self) {
        self.now = Instant::now();
        self.tick = self.wheel.tick_of(self.now);
        self.wall = wall_micros();
    }

    fn tick32(&self) -> u32 {
        self.tick as u32
    }

    fn conn(&self, key: ConnKey) -> Option<&Conn<S::Endpoint>> {
        self.conns
            .get(key.index as usize)
            .filter(|c| c.gen == key.gen)
    }

    fn conn_mut(&mut self, key: ConnKey) -> Option<&mut Conn<S::Endpoint>> {
        self.conns
            .get_mut(key.index as usize)
            .filter(|c| c.gen == key.gen)
    }

    pub(crate) fn transport(&self) -> Transport {
        let mut t = Transport {
            connections_active: self.conns.len(),
            websockets_active: self.websockets,
            ..Transport::default()
        };
        for (_, c) in &self.conns {
            t.outbound_bytes_pending += c.backlog_bytes();
            t.connections_paused += usize::from(c.has(flag::PAUSED));
        }
        t
    }

    /// Schedules `key`'s next check at `due` and makes it the live entry.
    fn arm(&mut self, key: ConnKey, due: u32) {
        if let Some(c) = self.conn_mut(key) {
            c.timer_due = due;
            self.wheel.insert(due as Tick, Deadline::Conn(key));
        }
    }

    fn arm_housekeeping(&mut self) {
        let ticks = (HOUSEKEEPING.as_millis() / TICK.as_millis()) as Tick;
        self.wheel.insert(self.tick + ticks, Deadline::Housekeeping);
    }

    fn arm_at_wall(&mut self, timer: S::Timer, due: u64) {
        let ticks = due
            .saturating_sub(self.wall)
            .div_ceil(TICK.as_micros() as u64);
        self.wheel
            .insert(self.tick + ticks + 1, Deadline::Service(timer));
    }

    fn arm_in(&mut self, timer: S::Timer, after: Duration) {
        let due = self.wheel.tick_after(self.now, after);
        self.wheel.insert(due, Deadline::Service(timer));
    }

    fn accept(&mut self, listener: &TcpListener, registry: &mio::Registry) {
        loop {
            match listener.accept() {
                Ok((stream, addr)) => self.admit(stream, addr, registry),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: counted, logged, and the loop goes on.
                    self.metrics.accept_errors += 1;
                    debug!("accept failed: {e}");
                    break;
                }
            }
        }
    }

    fn admit(
        &mut self,
        mut stream: mio::net::TcpStream,
        addr: SocketAddr,
        registry: &mio::Registry,
    ) {
        self.metrics.connections_total += 1;
        let ip = addr.ip();
        let over_ip = self.limits.max_connections_per_ip > 0
            && self.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.max_connections_per_ip;
        if self.conns.len() >= self.limits.max_connections || over_ip {
            self.metrics.rejected_connections += 1;
            debug!(
                "refusing {addr}: {}",
                if over_ip {
                    "per-address limit"
                } else {
                    "connection limit"
                }
            );
            // Best effort: the answer fits any socket buffer; then close.
            let _ = io::Write::write(&mut stream, SERVICE_UNAVAILABLE);
            return;
        }
        let _ = stream.set_nodelay(true);
        let deadline = self.tick32() + self.limits.handshake_ticks;
        let tick = self.tick32();
        let gen = self.next_gen.wrapping_add(1);
        let entry = self.conns.vacant_entry();
        let index = entry.key();
        if index >= (NONE as usize) - 2 {
            return;
        }
        // Readable and writable, edge-triggered, once: no epoll_ctl per write.
        if let Err(e) = registry.register(
            &mut stream,
            Token(index),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            debug!("register failed: {e}");
            return;
        }
        entry.insert(Conn::new(
            stream,
            gen,
            Phase::AwaitingRequest { deadline },
            tick,
        ));
        self.next_gen = gen;
        if self.limits.max_connections_per_ip > 0 {
            *self.per_ip.entry(ip).or_insert(0) += 1;
            self.ip_of.insert(index as u32, ip);
        }
        let key = ConnKey {
            index: index as u32,
            gen,
        };
        self.arm(key, deadline);
        debug!("connection {index} from {addr}");
    }
}

/// The whole answer for a connection refused at accept (a static, so refusing allocates nothing).
/// The answer to a request whose service did not answer in time ([`service::Answer::Later`]).
const GATEWAY_TIMEOUT: &[u8] = b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 20\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n504 Gateway Timeout\n";
const SERVICE_UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 24\r\nCache-Control: no-store\r\nRetry-After: 1\r\nConnection: close\r\n\r\n503 Service Unavailable\n";

impl<S: Service> Running<S> {
    /// Applies the closes the service asked for during its last call.
    fn settle(&mut self) {
        while let Some((key, code, reason)) = self.core.closing.pop() {
            self.fail(key, code, reason, Departure::Left);
        }
    }

    fn wake(&mut self) {
        let Running { core, svc } = self;
        svc.handle_wake(&mut Io { core });
        self.settle();
    }

    fn begin_shutdown(&mut self) {
        let peers = self
            .core
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Open { .. }))
            .count();
        self.core.shutdown = Some(Shutdown {
            by: self.core.now + CLOSE_TIMEOUT,
            peers,
            answered: 0,
        });
        debug!("shutting down: no new connections, closing {peers} peers with 1001");
        let keys: Vec<ConnKey> = self.core.conns.iter().map(|(i, c)| c.key(i)).collect();
        for key in keys {
            let c = &self.core.conns[key.index as usize];
            if matches!(c.phase, Phase::Open { .. }) {
                self.fail(
                    key,
                    CloseCode::Away,
                    "server shutting down",
                    Departure::Shutdown,
                );
            } else if !matches!(c.phase, Phase::ClosingByUs { .. }) {
                self.core.doomed.push(key);
            }
        }
        self.end_turn();
    }

    // ---- timers ----------------------------------------------------------

    fn fire_timers(&mut self) {
        let mut due = std::mem::take(&mut self.core.fired);
        self.core
            .wheel
            .advance(self.core.now, |tick, what| due.push((tick, what)));
        for (tick, what) in due.drain(..) {
            match what {
                Deadline::Conn(key) => self.on_conn_timer(key, tick as u32),
                Deadline::Service(timer) => {
                    let Running { core, svc } = self;
                    svc.handle_timer(&mut Io { core }, timer);
                    self.settle();
                }
                Deadline::Housekeeping => {
                    if let Some(free) = memory::release_free_heap() {
                        debug!("gave {} MiB of free heap back", free >> 20);
                    }
                    self.core.arm_housekeeping();
                }
            }
        }
        // Like the wheel's scratch: a burst must not stay resident.
        if due.capacity() <= 4096 {
            self.core.fired = due;
        }
    }

    fn on_conn_timer(&mut self, key: ConnKey, due: u32) {
        let tick = self.core.tick32();
        let limits = self.core.limits;
        let Some(c) = self.core.conn_mut(key) else {
            return;
        };
        if c.timer_due != due {
            return; // a stale entry: the connection re-armed since
        }
        // Output still moving to a reader keeps a non-open connection alive: its deadline counts
        // from the last bytes written, not from when it was set.
        let moving = |c: &Conn<S::Endpoint>, ticks: u32| {
            (c.pending() > 0 && tick < c.progress + ticks).then_some(c.progress + ticks)
        };
        match &mut c.phase {
            Phase::AwaitingRequest { deadline } if tick < *deadline => {
                let d = *deadline;
                self.core.arm(key, d);
            }
            Phase::AwaitingRequest { .. } => match moving(c, limits.handshake_ticks) {
                Some(next) => self.core.arm(key, next),
                None => {
                    self.core.metrics.handshake_timeouts += 1;
                    self.core.metrics.handshake_failures += 1;
                    debug!("handshake timeout on {}", key.index);
                    self.drop_conn(key, Departure::Left);
                }
            },
            Phase::Open { .. } => {
                let silent = tick.saturating_sub(c.progress);
                if silent >= limits.idle_ticks {
                    self.core.metrics.idle_timeouts += 1;
                    debug!("idle timeout on {}", key.index);
                    self.drop_conn(key, Departure::Left);
                } else if silent >= limits.ping_ticks && !c.has(flag::PINGED) {
                    c.set(flag::PINGED, true);
                    let next = c.progress + limits.idle_ticks;
                    self.core.send_frame(key, OpCode::Ping, b"");
                    self.core.arm(key, next);
                } else {
                    let next = c.progress
                        + if c.has(flag::PINGED) {
                            limits.idle_ticks
                        } else {
                            limits.ping_ticks
                        };
                    self.core.arm(key, next.max(tick + 1));
                }
            }
            Phase::AwaitingAnswer { deadline } if tick < *deadline => {
                let d = *deadline;
                self.core.arm(key, d);
            }
            Phase::AwaitingAnswer { .. } => {
                debug!("no answer in time for {}", key.index);
                self.core.answer_and_close(key, GATEWAY_TIMEOUT);
            }
            Phase::ClosingByUs { deadline, .. } | Phase::Finishing { deadline }
                if tick < *deadline =>
            {
                let d = *deadline;
                self.core.arm(key, d);
            }
            _ => match moving(c, limits.close_ticks) {
                Some(next) => self.core.arm(key, next),
                None => self.drop_conn(key, Departure::Left),
            },
        }
    }
}
