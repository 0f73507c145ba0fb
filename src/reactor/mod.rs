//! The reactor: one `mio::Poll`, one thread, every connection.
//!
//! Owns the loop (poll, dispatch by `Token`), the slab of [`Conn`]s, the one
//! shared receive buffer, the per-turn output cork and the timer wheel. It is
//! the only module that reads clocks and touches sockets: the protocol core
//! and the chat are handed bytes and `now`, and hand back events.
//!
//! A turn: poll → accept / read every ready socket (decode, apply to the
//! chat, queue frames into the cork) → fire due timers → write each dirty
//! connection once with a vectored write → close what must close.
//!
//! Cluster mode (`--redis`): the Redis bridge (`crate::cluster`) runs on its own
//! threads; it reaches the loop only through a channel and a `mio::Waker`
//! (token `BRIDGE`), and the loop reaches it only through a channel, so no
//! turn ever waits on Redis. Room posts and joins go to the bridge; what comes
//! back on its feed is applied to the chat's replica and delivered here like any
//! broadcast (see `chat::replica`). While Redis is unreachable the node serves
//! its own clients exactly as a single daemon does.

pub mod conn;
pub mod listener;
mod memory;
pub mod timer;

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::chat::{
    self, Chat, ChatConfig, Checked, EventFrame, GlobalPost, MemberId, Micros, Origin, Post,
    Resume, RoomKey,
};
use crate::cluster::{self, Bridge, Notice, Request};
use crate::config::{Config, CLOSE_TIMEOUT};
use crate::http::{self, Route};
use crate::metrics::{Gauges, Metrics};
use crate::protocol::close::write_close_payload;
use crate::protocol::frame::{encode_header, Fin, MAX_HEADER};
use crate::protocol::handshake::{self, HandshakeError, Method};
use crate::protocol::{CloseCode, Decoded, Event, OpCode, Role, WebSocket};
use conn::{Conn, ConnKey, Cork, Endpoint, Item, Phase, NONE};
use timer::{Tick, Wheel, TICK};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
/// The cluster bridge's waker: notices are waiting in its channel.
const BRIDGE: Token = Token(usize::MAX - 3);

/// Most text frames kept for a client whose cluster join is not answered yet; more are refused as
/// over the rate limit. The answer normally takes well under a millisecond.
const MAX_QUEUED_WHILE_JOINING: usize = 64;

/// How long the bridge gets at exit to take this node's members out of the cluster.
const BRIDGE_SHUTDOWN: Duration = Duration::from_secs(1);

/// Size of the one receive buffer shared by every connection.
const RECV_BUFFER: usize = 256 * 1024;

/// What a timer entry is for.
#[derive(Debug, Clone, Copy)]
enum Deadline {
    /// When to check a connection: handshake deadline, ping, idle or close timeout.
    Conn(ConnKey),
    /// When the oldest message of a room expires.
    Room(RoomKey),
    /// When the oldest message of the global channel expires.
    Global,
    /// Every [`HOUSEKEEPING`]: give memory freed after a burst back to the kernel.
    Housekeeping,
}

/// How often the reactor checks whether the allocator holds enough free memory to give back.
const HOUSEKEEPING: Duration = Duration::from_secs(10);

/// The daemon's state, apart from the poller and the receive buffer.
struct Core {
    cfg: Config,
    conns: Slab<Conn>,
    cork: Cork,
    wheel: Wheel<Deadline>,
    chat: Chat,
    metrics: Metrics,
    /// Connections per peer address, kept only under `--max-connections-per-ip`.
    per_ip: std::collections::HashMap<IpAddr, u32>,
    /// The address each connection counts against, by slab index (kept here,
    /// not asked of the socket at close: a reset socket has no peer address).
    ip_of: std::collections::HashMap<u32, IpAddr>,
    /// Connections to close at the end of the turn (after their output is written).
    doomed: Vec<ConnKey>,
    /// Deadlines due this turn, reused so firing timers allocates nothing.
    fired: Vec<(Tick, Deadline)>,
    next_gen: u32,
    websockets: usize,
    started: Instant,
    /// This turn's clock readings.
    now: Instant,
    tick: Tick,
    wall: Micros,
    ping_ticks: u32,
    idle_ticks: u32,
    handshake_ticks: u32,
    close_ticks: u32,
    /// The address the listener is bound to (for the page URL and logs).
    local: SocketAddr,
    /// Cluster mode state; `None` without `--redis`.
    cluster: Option<Cluster>,
    /// Room members whose `welcome` history was cut: their room and the last message id sent. The
    /// rest goes out as their socket drains (`pump_catch_up`); live `message` broadcasts skip them.
    catching_up: HashMap<MemberId, (RoomKey, u64)>,
}

/// Cluster mode: the bridge and what the reactor knows of the links.
struct Cluster {
    bridge: Bridge,
    /// The bridge's command link is up.
    commands_up: bool,
    /// While the feed is subscribed: the generation of its last image (applied or not).
    feed: Option<u64>,
    /// Serving as part of the cluster: both links up and an image applied since. Otherwise the node
    /// serves locally, as a single daemon.
    up: bool,
    /// The one `warn` of an outage was written (cleared when the node is back in the cluster).
    down_logged: bool,
    /// Room joins waiting for the bridge's answer.
    joining: HashMap<MemberId, Joining>,
}

/// A room join waiting for the cluster: what `welcome` needs, and the frames sent meanwhile.
///
/// In the cluster, `welcome` is sent when the member's own `join` comes back on the feed, not when the
/// bridge answers: the feed is ordered, so by then the replica holds everything published before the
/// join (members, messages) and `welcome` misses nothing that no later event brings.
struct Joining {
    room: String,
    wanted: String,
    since: Option<u64>,
    epoch: Option<String>,
    queued: Vec<Box<str>>,
    /// The bridge's answer (name, epoch), kept in case the feed drops before the `join` comes back.
    answer: Option<(String, String)>,
}

/// The running daemon.
pub struct Reactor {
    poll: Poll,
    listener: Option<TcpListener>,
    signals: signal_hook_mio::v1_0::Signals,
    rbuf: Vec<u8>,
    core: Core,
    /// Connections open when the shutdown began (for the closing log line).
    shutdown_peers: usize,
}

impl Reactor {
    /// Binds the listener and sets everything up; nothing is served until [`Reactor::run`].
    pub fn bind(cfg: Config) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let mut listener = listener::bind(cfg.bind)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = signal_hook_mio::v1_0::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let local = listener.local_addr()?;
        let cluster = match &cfg.redis {
            Some(url) => {
                let waker = Waker::new(poll.registry(), BRIDGE)?;
                let bridge = cluster::start(
                    cluster::Settings {
                        url: url.clone(),
                        ttl: cfg.history_ttl,
                        history_max: cfg.history_max,
                    },
                    waker,
                )?;
                info!("cluster: joining through Redis at {url}");
                Some(Cluster {
                    bridge,
                    commands_up: false,
                    feed: None,
                    up: false,
                    down_logged: false,
                    joining: HashMap::new(),
                })
            }
            None => None,
        };
        let now = Instant::now();
        let wall = wall_micros();
        let secs = |d: Duration| (d.as_millis() / TICK.as_millis()) as u32;
        let chat = Chat::new(
            ChatConfig {
                ttl_secs: cfg.history_ttl.as_secs(),
                history_max: cfg.history_max,
                history_max_bytes: cfg.history_max_bytes,
                welcome_history_bytes: cfg.welcome_history_bytes,
                rate_limit: cfg.rate_limit.map(|r| chat::RateLimit {
                    tokens: r.tokens,
                    per_secs: r.per_secs,
                }),
                rate_limit_per_ip: cfg.rate_limit_per_ip.map(|r| chat::RateLimit {
                    tokens: r.tokens,
                    per_secs: r.per_secs,
                }),
            },
            wall ^ ((std::process::id() as u64) << 40),
        );
        let mut core = Core {
            ping_ticks: secs(cfg.ping_interval),
            idle_ticks: secs(cfg.idle_timeout),
            handshake_ticks: secs(cfg.handshake_timeout),
            close_ticks: secs(CLOSE_TIMEOUT),
            conns: Slab::new(),
            cork: Cork::default(),
            wheel: Wheel::new(now),
            chat,
            metrics: Metrics::default(),
            per_ip: Default::default(),
            ip_of: Default::default(),
            doomed: Vec::new(),
            fired: Vec::new(),
            next_gen: 0,
            websockets: 0,
            started: now,
            now,
            tick: 0,
            wall,
            local,
            cfg,
            cluster,
            catching_up: HashMap::new(),
        };
        core.arm_housekeeping();
        Ok(Reactor {
            poll,
            listener: Some(listener),
            signals,
            rbuf: vec![0; RECV_BUFFER],
            core,
            shutdown_peers: 0,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.core.local
    }

    /// Serves until SIGINT or SIGTERM, then shuts down gracefully (SPEC §6):
    /// stop accepting, close 1001 to every peer, wait up to 5 s, return.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut shutdown_by: Option<Instant> = None;
        loop {
            let timeout = self.core.wheel.timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.core.clock();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    BRIDGE => self.core.on_bridge(),
                    SIGNALS => {
                        if self.signals.pending().next().is_some() && shutdown_by.is_none() {
                            shutdown_by = Some(self.core.now + CLOSE_TIMEOUT);
                            self.begin_shutdown();
                        }
                    }
                    Token(i) => {
                        // A FIN or error in the same edge as data must still be
                        // seen: then read on to EOF instead of stopping early.
                        let hup = event.is_read_closed() || event.is_error();
                        if event.is_readable() || hup {
                            self.core.on_readable(i, &mut self.rbuf, hup);
                        }
                        if event.is_writable() {
                            self.core.on_writable(i);
                        }
                    }
                }
            }
            self.core.fire_timers();
            self.core.end_turn();
            if let Some(by) = shutdown_by {
                if self.core.conns.is_empty() || Instant::now() >= by {
                    if let Some(c) = self.core.cluster.take() {
                        c.bridge.shutdown(BRIDGE_SHUTDOWN);
                    }
                    info!(
                        "wisp stopped: {} of {} peers closed cleanly",
                        self.shutdown_peers.saturating_sub(self.core.conns.len()),
                        self.shutdown_peers
                    );
                    return Ok(());
                }
            }
        }
    }

    fn begin_shutdown(&mut self) {
        self.shutdown_peers = self.core.conns.len();
        debug!(
            "shutting down: no new connections, closing {} peers with 1001",
            self.shutdown_peers
        );
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let keys: Vec<ConnKey> = self.core.conns.iter().map(|(i, c)| c.key(i)).collect();
        for key in keys {
            let c = &self.core.conns[key.index as usize];
            if matches!(c.phase, Phase::Open { .. }) {
                self.core.fail(
                    key,
                    CloseCode::Away,
                    "server shutting down",
                    Leave::Silently,
                );
            } else if !matches!(c.phase, Phase::ClosingByUs { .. }) {
                self.core.doomed.push(key);
            }
        }
        self.core.end_turn();
    }

    fn accept(&mut self) {
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((stream, addr)) => self.core.admit(stream, addr, self.poll.registry()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: counted, logged, and the loop goes on.
                    self.core.metrics.accept_errors += 1;
                    debug!("accept failed: {e}");
                    break;
                }
            }
        }
    }
}

/// Whether a departing room member owes the others a `leave` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    Announce,
    /// Shutdown: no `leave` events are owed (SPEC §4.4).
    Silently,
}

fn wall_micros() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as Micros)
}

impl Core {
    fn clock(&mut self) {
        self.now = Instant::now();
        self.tick = self.wheel.tick_of(self.now);
        self.wall = wall_micros();
    }

    fn tick32(&self) -> u32 {
        self.tick as u32
    }

    /// Schedules `key`'s next check at `due` and makes it the live entry.
    fn arm(&mut self, key: ConnKey, due: u32) {
        if let Some(c) = self.conns.get_mut(key.index as usize) {
            c.timer_due = due;
            self.wheel.insert(due as Tick, Deadline::Conn(key));
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
        let over_ip = self.cfg.max_connections_per_ip > 0
            && self.per_ip.get(&ip).copied().unwrap_or(0) >= self.cfg.max_connections_per_ip;
        if self.conns.len() >= self.cfg.max_connections || over_ip {
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
            let _ = io::Write::write(
                &mut stream,
                &http::error_response(503, "Retry-After: 1\r\n"),
            );
            return;
        }
        let _ = stream.set_nodelay(true);
        let deadline = self.tick32() + self.handshake_ticks;
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
        if self.cfg.max_connections_per_ip > 0 {
            *self.per_ip.entry(ip).or_insert(0) += 1;
            self.ip_of.insert(index as u32, ip);
        }
        self.arm(
            ConnKey {
                index: index as u32,
                gen,
            },
            deadline,
        );
        debug!("connection {index} from {addr}");
    }

    /// Reads until the socket is drained, handing bytes to the connection's phase.
    fn on_readable(&mut self, index: usize, rbuf: &mut [u8], hup: bool) {
        loop {
            let Some(c) = self.conns.get_mut(index) else {
                return;
            };
            let key = c.key(index);
            // Put the kept tail in front of the new bytes.
            let start = c.tail().len();
            if start > 0 {
                rbuf[..start].copy_from_slice(c.tail());
                c.set_tail(&[]);
            }
            let room = rbuf.len() - start;
            let n = match c.stream.read(&mut rbuf[start..]) {
                Ok(0) => {
                    // FIN: whatever the phase, the peer is gone.
                    self.drop_conn(key, Leave::Announce);
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
                    self.drop_conn(key, Leave::Announce);
                    return;
                }
            };
            self.metrics.bytes_received += n as u64;
            let len = start + n;
            let used = self.consume(key, &mut rbuf[..len]);
            if let Some(c) = self.conns.get_mut(index) {
                if used < len && c.gen == key.gen {
                    c.set_tail(&rbuf[used..len]);
                }
            }
            // A short read drained the socket; the next arrival is a new edge.
            if n < room && !hup {
                return;
            }
        }
    }

    /// Processes `buf` for the connection; returns the bytes used.
    fn consume(&mut self, key: ConnKey, buf: &mut [u8]) -> usize {
        let mut used = 0;
        loop {
            let Some(c) = self.conns.get_mut(key.index as usize) else {
                return buf.len();
            };
            if c.gen != key.gen {
                return buf.len();
            }
            let step = match c.phase {
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
        let c = &mut self.conns[key.index as usize];
        let Phase::ClosingByUs { peer, .. } = &mut c.phase else {
            unreachable!("bug: await_close outside ClosingByUs")
        };
        let ws = peer.as_mut().expect("bug: no decoder kept");
        let mut used = 0;
        loop {
            match ws.read(&mut buf[used..]) {
                Ok((_, Some(Event::Close { .. }))) => {
                    self.doomed.push(key);
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
        let (req, len) = match handshake::parse(buf) {
            Ok(Decoded::Done(r)) => r,
            Ok(Decoded::NeedMore) => return 0,
            Err(e) => {
                self.metrics.handshake_failures += 1;
                debug!("bad request on {}: {e:?}", key.index);
                self.answer_and_close(key, http::error_response(e.status(), ""));
                return buf.len();
            }
        };
        let route = http::route(req.path(), req.query(), self.cfg.echo);
        if route.is_websocket() {
            if let Err(status) = self.check_origin(req.origin) {
                self.metrics.handshake_failures += 1;
                debug!(
                    "refused upgrade on {}: origin {:?} not allowed",
                    key.index, req.origin
                );
                self.answer_and_close(key, http::error_response(status, ""));
                return buf.len();
            }
            let accept = match handshake::check_upgrade(&req) {
                Ok(a) => a,
                Err(e) => {
                    self.metrics.handshake_failures += 1;
                    debug!("refused upgrade on {}: {e:?}", key.index);
                    let extra = match e {
                        HandshakeError::BadVersion | HandshakeError::UpgradeRequired => {
                            "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n"
                        }
                        HandshakeError::MethodNotAllowed => "Allow: GET\r\n",
                        _ => "",
                    };
                    self.answer_and_close(key, http::error_response(e.status(), extra));
                    return buf.len();
                }
            };
            self.send_local(key, &handshake::switching_protocols(&accept));
            self.open(key, route);
            return len;
        }
        self.metrics.http_requests += 1;
        let origin = req.origin.map(str::to_owned);
        let keep_alive = req.keep_alive && !req.has_body;
        let head_only = req.method == Method::Head;
        let bytes = if req.method == Method::Other && route != Route::NotFound {
            http::error_response(405, "Allow: GET, HEAD\r\n")
        } else {
            self.plain_answer(&route, origin.as_deref(), keep_alive, head_only)
        };
        if keep_alive && req.method != Method::Other {
            self.send_local(key, &bytes);
            let deadline = self.tick32() + self.handshake_ticks;
            if let Some(c) = self.conns.get_mut(key.index as usize) {
                c.phase = Phase::AwaitingRequest { deadline };
            }
            self.arm(key, deadline);
            len
        } else {
            self.answer_and_close(key, bytes);
            buf.len()
        }
    }

    fn check_origin(&self, origin: Option<&str>) -> Result<(), u16> {
        if self.cfg.allowed_origins.is_empty() {
            return Ok(());
        }
        match origin {
            Some(o)
                if self
                    .cfg
                    .allowed_origins
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(o.trim_end_matches('/'))) =>
            {
                Ok(())
            }
            _ => Err(403),
        }
    }

    fn cors(&self, origin: Option<&str>) -> String {
        if self.cfg.allowed_origins.is_empty() {
            return "Access-Control-Allow-Origin: *\r\n".into();
        }
        match origin {
            Some(o) if self.check_origin(Some(o)).is_ok() => {
                format!("Access-Control-Allow-Origin: {o}\r\nVary: Origin\r\n")
            }
            _ => "Vary: Origin\r\n".into(),
        }
    }

    fn plain_answer(
        &self,
        route: &Route<'_>,
        origin: Option<&str>,
        keep_alive: bool,
        head_only: bool,
    ) -> Vec<u8> {
        const JSON: &str = "application/json";
        let body: String;
        let (status, ctype, bytes): (u16, &str, &[u8]) = match route {
            Route::Page => (
                200,
                "text/html; charset=utf-8",
                http::CLIENT_PAGE.as_bytes(),
            ),
            Route::Health => {
                body = self.health_json();
                (200, JSON, body.as_bytes())
            }
            Route::Metrics => {
                body = self.metrics.render(&self.gauges());
                (
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    body.as_bytes(),
                )
            }
            Route::Messages { limit } => {
                body = self.chat.messages_json(*limit, self.wall);
                (200, JSON, body.as_bytes())
            }
            Route::Rooms => {
                body = self.chat.rooms_json(self.wall);
                (200, JSON, body.as_bytes())
            }
            Route::RoomMessages { room, since, limit } => {
                body = self
                    .chat
                    .room_messages_json(room, *since, *limit, self.wall);
                (200, JSON, body.as_bytes())
            }
            _ => {
                return http::write_response(
                    &http::Response {
                        status: 404,
                        content_type: "text/plain; charset=utf-8",
                        body: b"404 Not Found\n",
                        extra: "",
                    },
                    keep_alive,
                    head_only,
                )
            }
        };
        let extra = if ctype == JSON {
            self.cors(origin)
        } else if *route == Route::Page {
            http::PAGE_HEADERS.to_owned()
        } else {
            String::new()
        };
        http::write_response(
            &http::Response {
                status,
                content_type: ctype,
                body: bytes,
                extra: &extra,
            },
            keep_alive,
            head_only,
        )
    }

    fn health_json(&self) -> String {
        let mut v = serde_json::json!({
            "status": "ok",
            "connections": self.websockets,
            "rooms": self.chat.counts().rooms,
            "uptime_s": self.now.duration_since(self.started).as_secs(),
        });
        if let Some(c) = &self.cluster {
            v["redis"] = if c.up { "up" } else { "down" }.into();
        }
        v.to_string()
    }

    fn gauges(&self) -> Gauges {
        let counts = self.chat.counts();
        Gauges {
            connections_active: self.conns.len(),
            websockets_active: self.websockets,
            rooms_active: counts.rooms,
            history_messages: counts.history_messages,
            history_bytes: counts.history_bytes,
            history_dropped: self.chat.history_dropped_total(),
            messages_expired: self.chat.expired_total(),
            rate_limited: self.chat.rate_limited_total(),
            uptime_s: self.now.duration_since(self.started).as_secs(),
            outbound_bytes_pending: self.conns.iter().map(|(_, c)| c.backlog_bytes()).sum(),
            redis_up: self.cluster.as_ref().map(|c| c.up),
        }
    }

    /// The upgrade succeeded: attach the connection to its endpoint.
    fn open(&mut self, key: ConnKey, route: Route<'_>) {
        let member = key.member();
        let endpoint = match route {
            Route::Echo => Endpoint::Echo,
            Route::Global => {
                let ip = self.peer_ip(key);
                self.chat.global_join(member, ip, self.wall);
                Endpoint::Global
            }
            Route::Room {
                room,
                client,
                since,
                epoch,
            } => match self.cluster.as_mut().filter(|c| c.up) {
                Some(c) => {
                    // The cluster de-duplicates the name; `welcome` waits for its answer.
                    let room = chat::clean_room(&http::percent_decode(room));
                    let wanted = chat::clean_client(&http::percent_decode(client));
                    c.bridge.send(Request::Join {
                        conn: member.0,
                        room: room.clone(),
                        wanted: wanted.clone(),
                    });
                    c.joining.insert(
                        member,
                        Joining {
                            room,
                            wanted,
                            since,
                            epoch,
                            queued: Vec::new(),
                            answer: None,
                        },
                    );
                    Endpoint::Joining
                }
                None => {
                    let ip = self.peer_ip(key);
                    let joined = self.chat.join(
                        &http::percent_decode(room),
                        &http::percent_decode(client),
                        member,
                        ip,
                        Resume {
                            since,
                            epoch: epoch.as_deref(),
                        },
                        self.wall,
                    );
                    self.send_text_local(key, joined.welcome.as_bytes());
                    self.start_catch_up(member, joined.key, joined.catch_up);
                    let frame = self.share(&joined.join_event);
                    self.broadcast_room(joined.key, frame, Some(member));
                    Endpoint::Room(joined.key)
                }
            },
            _ => unreachable!("bug: not a WebSocket route"),
        };
        self.websockets += 1;
        let tick = self.tick32();
        let Some(c) = self.conns.get_mut(key.index as usize) else {
            return;
        };
        c.phase = Phase::Open {
            ws: WebSocket::new(Role::Server, self.cfg.max_message_bytes),
            endpoint,
        };
        c.last_rx = tick;
        debug!("connection {} open on {endpoint:?}", key.index);
        // The handshake deadline's entry stays the live one when it comes
        // first: on firing it finds the connection open and re-arms for the
        // heartbeat. One entry per connection, not two (density).
        if c.timer_due > tick + self.ping_ticks {
            self.arm(key, tick + self.ping_ticks);
        }
    }

    /// Decodes frames at the start of `buf`; returns the bytes used.
    fn handle_frames(&mut self, key: ConnKey, buf: &mut [u8]) -> usize {
        let c = &mut self.conns[key.index as usize];
        let Phase::Open { ws, endpoint, .. } = std::mem::replace(&mut c.phase, Phase::Busy) else {
            unreachable!("bug: handle_frames outside Open")
        };
        let mut ws = ws;
        c.last_rx = self.tick as u32;
        c.pinged = false;
        let mut used = 0;
        let mut outcome = Ok(());
        while used < buf.len() {
            match ws.read(&mut buf[used..]) {
                Ok((0, None)) => break,
                Ok((n, event)) => {
                    used += n;
                    if let Some(event) = event {
                        if let Err(stop) = self.on_event(key, endpoint, event) {
                            outcome = Err(stop);
                            break;
                        }
                    }
                }
                Err(e) => {
                    self.metrics.protocol_errors += 1;
                    debug!("protocol error on {}: {e}", key.index);
                    outcome = Err(Stop::Fail(CloseCode::from(&e), "protocol error"));
                    break;
                }
            }
        }
        let c = &mut self.conns[key.index as usize];
        if matches!(c.phase, Phase::Busy) {
            c.phase = Phase::Open { ws, endpoint };
        }
        match outcome {
            Ok(()) => used,
            Err(Stop::Fail(code, reason)) => {
                self.fail(key, code, reason, Leave::Announce);
                buf.len()
            }
            Err(Stop::Echoed) => buf.len(),
        }
    }

    /// Applies one event from an open connection.
    fn on_event(&mut self, key: ConnKey, endpoint: Endpoint, event: Event<'_>) -> Result<(), Stop> {
        match event {
            Event::Text(text) => {
                self.metrics.messages_received += 1;
                self.on_text(key, endpoint, text);
            }
            Event::Binary(data) => {
                self.metrics.messages_received += 1;
                match endpoint {
                    Endpoint::Echo => self.send_frame_local(key, OpCode::Binary, data),
                    _ => {
                        self.metrics.protocol_errors += 1;
                        return Err(Stop::Fail(
                            CloseCode::Unsupported,
                            "binary messages are not accepted",
                        ));
                    }
                }
            }
            Event::Ping(payload) => self.send_frame_local(key, OpCode::Pong, payload),
            Event::Pong(_) => {}
            Event::Close { code, .. } => {
                // §5.5.1: answer with a Close, echoing the code; then we close TCP first.
                let mut payload = [0u8; 125];
                let n = match code {
                    Some(code) => write_close_payload(code, "", &mut payload),
                    None => 0,
                };
                self.send_frame_local(key, OpCode::Close, &payload[..n]);
                self.detach(key, endpoint, Leave::Announce);
                let deadline = self.tick32() + self.close_ticks;
                self.conns[key.index as usize].phase = Phase::Finishing { deadline };
                self.arm(key, deadline);
                return Err(Stop::Echoed);
            }
        }
        Ok(())
    }

    /// Applies one text message from an open connection.
    fn on_text(&mut self, key: ConnKey, endpoint: Endpoint, text: &str) {
        let member = key.member();
        let clustered = self.cluster.as_ref().is_some_and(|c| c.up);
        match endpoint {
            Endpoint::Echo => self.send_frame_local(key, OpCode::Text, text.as_bytes()),
            Endpoint::Global if clustered => match self.chat.global_admit(member, self.wall) {
                // Delivered, to the sender too, when it comes back on the feed.
                Ok(()) => self.bridge_send(Request::GlobalPost {
                    text: text.to_owned(),
                }),
                Err(Some(error)) => {
                    debug!("rate limited {}", key.index);
                    self.send_text_local(key, error.as_bytes());
                }
                Err(None) => {}
            },
            Endpoint::Global => match self.chat.global_post(member, text, self.wall) {
                GlobalPost::Broadcast { frame, arm_expiry } => {
                    let frame = self.share(&frame);
                    self.broadcast_global(frame);
                    if let Some(due) = arm_expiry {
                        self.arm_expiry(Deadline::Global, due);
                    }
                }
                GlobalPost::RateLimited { error } => {
                    debug!("rate limited {}", key.index);
                    self.send_text_local(key, error.as_bytes());
                }
                GlobalPost::Dropped => {}
            },
            Endpoint::Room(room) if clustered => {
                match self.chat.check_post(room, member, text, self.wall) {
                    Checked::Accept(content) => self.bridge_send(Request::Post {
                        conn: member.0,
                        content: content.into_owned(),
                    }),
                    Checked::Reply { error } => {
                        debug!("chat error for {}: {error}", key.index);
                        self.send_text_local(key, error.as_bytes());
                    }
                    Checked::Ignored => {}
                }
            }
            Endpoint::Room(room) => {
                let post = self.chat.post(room, member, text, self.wall);
                self.apply_post(key, room, post);
            }
            Endpoint::Joining => {
                let queued = self
                    .cluster
                    .as_mut()
                    .and_then(|c| c.joining.get_mut(&member))
                    .map(|j| {
                        let room_left = j.queued.len() < MAX_QUEUED_WHILE_JOINING;
                        if room_left {
                            j.queued.push(text.into());
                        }
                        room_left
                    });
                if queued == Some(false) {
                    self.metrics.rate_limited += 1;
                    debug!("rate limited {} while joining", key.index);
                    let error = r#"{"type":"error","code":"rate_limited","message":"too many messages before welcome"}"#;
                    self.send_text_local(key, error.as_bytes());
                }
            }
        }
    }

    fn apply_post(&mut self, key: ConnKey, room: RoomKey, post: Post) {
        match post {
            Post::Broadcast { event, arm_expiry } => {
                let frame = self.share(&event);
                self.broadcast_room_message(room, frame);
                if let Some(due) = arm_expiry {
                    self.arm_expiry(Deadline::Room(room), due);
                }
            }
            Post::Reply { error } => {
                debug!("chat error for {}: {error}", key.index);
                self.send_text_local(key, error.as_bytes());
            }
            Post::Ignored => {}
        }
    }

    fn bridge_send(&self, req: Request) {
        if let Some(c) = &self.cluster {
            c.bridge.send(req);
        }
    }

    // ---- cluster ---------------------------------------------------------

    /// The bridge's waker fired: apply every notice waiting, in order.
    fn on_bridge(&mut self) {
        let Some(c) = &self.cluster else {
            return;
        };
        for notice in c.bridge.drain() {
            self.on_notice(notice);
        }
    }

    fn on_notice(&mut self, notice: Notice) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let up = c.up;
        match notice {
            Notice::Commands { up: true } => {
                c.commands_up = true;
                if let (false, Some(gen)) = (c.up, c.feed) {
                    // The feed's image came while commands were down and was not used: get a fresh one.
                    c.bridge.send(Request::Resync { gen });
                }
            }
            Notice::Commands { up: false } => {
                c.commands_up = false;
                self.leave_cluster();
            }
            Notice::FeedDown => {
                c.feed = None;
                self.leave_cluster();
            }
            Notice::FeedUp { gen, image } => {
                c.feed = Some(gen);
                if c.commands_up {
                    self.enter_cluster(&image);
                }
            }
            Notice::Message { room, epoch, msg } if up => {
                if let Some((key, event, arm)) = self.chat.cluster_message(&room, &epoch, &msg) {
                    let frame = self.share(&event);
                    self.broadcast_room_message(key, frame);
                    if let Some(due) = arm {
                        self.arm_expiry(Deadline::Room(key), due);
                    }
                }
            }
            Notice::Presence {
                room,
                epoch,
                kind,
                name,
                at,
                origin,
                resync,
                conn,
            } if up => {
                // Our own re-registration tells our clients nothing new.
                if resync && origin == Origin::Here {
                    return;
                }
                if kind == chat::Presence::Join
                    && origin == Origin::Here
                    && c.joining.contains_key(&MemberId(conn))
                {
                    self.finish_join(MemberId(conn), Some((name.clone(), epoch.clone())));
                }
                if let Some(d) = self
                    .chat
                    .cluster_presence(&room, &epoch, kind, &name, at, origin)
                {
                    let frame = self.share(&d.event);
                    self.broadcast_room(d.room, frame, d.except);
                }
            }
            Notice::Global { seq, at, text } if up => {
                if let Some((frame, arm)) = self.chat.cluster_global(seq, at, &text) {
                    let frame = self.share(&frame);
                    self.broadcast_global(frame);
                    if let Some(due) = arm {
                        self.arm_expiry(Deadline::Global, due);
                    }
                }
            }
            Notice::Message { .. } | Notice::Presence { .. } | Notice::Global { .. } => {
                // Not in the cluster now: the next image brings the replica up to date.
            }
            Notice::Joined { conn, name, epoch } => {
                match c.joining.get_mut(&MemberId(conn)) {
                    // `welcome` waits for the `join` on the feed.
                    Some(j) if up => j.answer = Some((name, epoch)),
                    Some(_) => self.finish_join(MemberId(conn), Some((name, epoch))),
                    None => {}
                }
            }
            Notice::JoinFailed { conn } => self.finish_join(MemberId(conn), None),
            Notice::PostFailed { conn, content } => {
                let key = ConnKey::from_member(MemberId(conn));
                let room = match self.conns.get(key.index as usize) {
                    Some(Conn {
                        gen,
                        phase:
                            Phase::Open {
                                endpoint: Endpoint::Room(room),
                                ..
                            },
                        ..
                    }) if *gen == key.gen => *room,
                    _ => return,
                };
                let post = self
                    .chat
                    .post_content(room, MemberId(conn), &content, self.wall);
                self.apply_post(key, room, post);
            }
            Notice::GlobalFailed { text } => {
                let (frame, arm) = self.chat.global_store(&text, self.wall);
                let frame = self.share(&frame);
                self.broadcast_global(frame);
                if let Some(due) = arm {
                    self.arm_expiry(Deadline::Global, due);
                }
            }
            Notice::Epoch { room, epoch } => {
                if up {
                    self.chat.cluster_epoch(&room, &epoch);
                }
            }
        }
    }

    /// Both links are up and `image` is fresh: become a replica of the cluster.
    fn enter_cluster(&mut self, image: &chat::ClusterImage) {
        let applied = self.chat.apply_image(image, self.wall);
        for d in applied.deliveries {
            let frame = self.share(&d.event);
            self.broadcast_room(d.room, frame, d.except);
        }
        for (room, due) in applied.arm_rooms {
            self.arm_expiry(Deadline::Room(room), due);
        }
        if let Some(due) = applied.arm_global {
            self.arm_expiry(Deadline::Global, due);
        }
        // Our members: those that joined while Redis was away, or that a restarted Redis lost.
        let mut members = Vec::new();
        let mut pending = Vec::new();
        for (i, conn) in self.conns.iter() {
            let Phase::Open { endpoint, .. } = &conn.phase else {
                continue;
            };
            let m = conn.key(i).member();
            match *endpoint {
                Endpoint::Room(room) => {
                    if let (Some(r), Some(name)) =
                        (self.chat.room_id(room), self.chat.member_name(room, m))
                    {
                        members.push((m.0, r.to_owned(), name.to_owned()));
                    }
                }
                Endpoint::Joining => pending.push(m.0),
                _ => {}
            }
        }
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        c.bridge.send(Request::Sync { members, pending });
        if !c.up {
            info!("cluster: connected to Redis; serving as part of the cluster");
        }
        c.up = true;
        c.down_logged = false;
    }

    /// A link to Redis is down: serve local clients on our own until it is back.
    fn leave_cluster(&mut self) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let was_up = std::mem::replace(&mut c.up, false);
        if !c.down_logged {
            c.down_logged = true;
            warn!("cluster: Redis unreachable; serving this node's clients only until it is back");
        }
        // Joins the bridge answered but whose `join` the feed will not bring now: welcome them with
        // what the replica has. The others are welcomed when the bridge answers.
        let answered: Vec<(MemberId, (String, String))> = c
            .joining
            .iter_mut()
            .filter_map(|(m, j)| Some((*m, j.answer.take()?)))
            .collect();
        if was_up {
            self.chat.go_local();
        }
        for (m, answer) in answered {
            self.finish_join(m, Some(answer));
        }
    }

    /// A room join is settled: send `welcome` (in the cluster with the cluster's name and epoch, or a
    /// local join when the node is serving locally), then apply the frames the client sent meanwhile.
    fn finish_join(&mut self, member: MemberId, answer: Option<(String, String)>) {
        let Some(j) = self
            .cluster
            .as_mut()
            .and_then(|c| c.joining.remove(&member))
        else {
            return; // the connection ended first; its Leave went to the bridge after the Join
        };
        let key = ConnKey::from_member(member);
        match self.conns.get(key.index as usize) {
            Some(c)
                if c.gen == key.gen
                    && matches!(
                        c.phase,
                        Phase::Open {
                            endpoint: Endpoint::Joining,
                            ..
                        }
                    ) => {}
            _ => return,
        }
        let resume = Resume {
            since: j.since,
            epoch: j.epoch.as_deref(),
        };
        let up = self.cluster.as_ref().is_some_and(|c| c.up);
        let ip = self.peer_ip(key);
        let room = match answer {
            Some((name, epoch)) if up => {
                let joined = self
                    .chat
                    .cluster_join(&j.room, &name, &epoch, member, ip, resume, self.wall);
                self.send_text_local(key, joined.welcome.as_bytes());
                self.start_catch_up(member, joined.key, joined.catch_up);
                joined.key
            }
            // Serving locally: a local join (local epoch), under the cluster's name if it gave one.
            answer => {
                let name = answer.map_or(j.wanted, |(name, _)| name);
                let joined = self
                    .chat
                    .join(&j.room, &name, member, ip, resume, self.wall);
                self.send_text_local(key, joined.welcome.as_bytes());
                self.start_catch_up(member, joined.key, joined.catch_up);
                let frame = self.share(&joined.join_event);
                self.broadcast_room(joined.key, frame, Some(member));
                joined.key
            }
        };
        if let Some(Phase::Open { endpoint, .. }) =
            self.conns.get_mut(key.index as usize).map(|c| &mut c.phase)
        {
            *endpoint = Endpoint::Room(room);
        }
        for text in j.queued {
            self.on_text(key, Endpoint::Room(room), &text);
        }
    }

    /// Sends a close frame, leaves the chat and waits for the peer's FIN.
    fn fail(&mut self, key: ConnKey, code: CloseCode, reason: &str, leave: Leave) {
        let Some(c) = self.conns.get_mut(key.index as usize) else {
            return;
        };
        if c.gen != key.gen {
            return;
        }
        let (endpoint, ws) = match std::mem::replace(&mut c.phase, Phase::Busy) {
            Phase::Open { endpoint, ws } => (Some(endpoint), Some(ws)),
            _ => (None, None),
        };
        // After 1002/1007/1009 the input may be cut mid-frame: stop decoding.
        let peer = ws.filter(|_| {
            matches!(
                code,
                CloseCode::Normal | CloseCode::Away | CloseCode::Policy | CloseCode::Unsupported
            )
        });
        let mut payload = [0u8; 125];
        let n = write_close_payload(code, reason, &mut payload);
        self.send_frame_local(key, OpCode::Close, &payload[..n]);
        if let Some(endpoint) = endpoint {
            self.detach(key, endpoint, leave);
        }
        let deadline = self.tick32() + self.close_ticks;
        self.conns[key.index as usize].phase = Phase::ClosingByUs {
            deadline,
            fin_sent: false,
            peer,
        };
        self.arm(key, deadline);
        debug!("closing {} with {code}: {reason}", key.index);
    }

    /// Removes an open connection from its channel or room.
    fn detach(&mut self, key: ConnKey, endpoint: Endpoint, leave: Leave) {
        self.websockets -= 1;
        match endpoint {
            Endpoint::Echo => {}
            Endpoint::Global => self.chat.global_leave(key.member()),
            Endpoint::Joining => {
                if let Some(c) = self.cluster.as_mut() {
                    c.joining.remove(&key.member());
                    c.bridge.send(Request::Leave {
                        conn: key.member().0,
                    });
                }
            }
            Endpoint::Room(room) => {
                self.catching_up.remove(&key.member());
                let event = self.chat.leave(room, key.member(), self.wall);
                let clustered = match &self.cluster {
                    Some(c) => {
                        // At shutdown the bridge takes all our members out at once.
                        if leave == Leave::Announce {
                            c.bridge.send(Request::Leave {
                                conn: key.member().0,
                            });
                        }
                        c.up
                    }
                    None => false,
                };
                // In the cluster, the `leave` comes back on the feed, to every node alike.
                if let (Some(event), Leave::Announce, false) = (event, leave, clustered) {
                    let frame = self.share(&event);
                    self.broadcast_room(room, frame, None);
                }
            }
        }
    }

    fn answer_and_close(&mut self, key: ConnKey, bytes: Vec<u8>) {
        self.send_local(key, &bytes);
        let deadline = self.tick32() + self.close_ticks;
        if let Some(c) = self.conns.get_mut(key.index as usize) {
            c.phase = Phase::Finishing { deadline };
        }
        self.arm(key, deadline);
    }

    // ---- output ----------------------------------------------------------

    /// Queues bytes for one connection in this turn's cork.
    fn send_local(&mut self, key: ConnKey, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(key.index as usize) else {
            return;
        };
        let start = self.cork.bytes.len() as u32;
        self.cork.bytes.extend_from_slice(bytes);
        self.cork.link(
            key.index,
            c,
            Item::Local {
                start,
                len: bytes.len() as u32,
            },
        );
    }

    /// Queues one frame for one connection, header and payload copied once.
    fn send_frame_local(&mut self, key: ConnKey, opcode: OpCode, payload: &[u8]) {
        let Some(c) = self.conns.get_mut(key.index as usize) else {
            return;
        };
        let mut header = [0u8; MAX_HEADER];
        let h = encode_header(&mut header, Fin::Final, opcode, payload.len() as u64, None);
        let start = self.cork.bytes.len() as u32;
        self.cork.bytes.extend_from_slice(&header[..h]);
        self.cork.bytes.extend_from_slice(payload);
        self.cork.link(
            key.index,
            c,
            Item::Local {
                start,
                len: (h + payload.len()) as u32,
            },
        );
        if opcode != OpCode::Close {
            self.metrics.messages_sent += 1;
        }
    }

    fn send_text_local(&mut self, key: ConnKey, text: &[u8]) {
        self.send_frame_local(key, OpCode::Text, text);
    }

    /// Makes an event's frame (encoded once) available to this turn's cork lists; returns its index
    /// for [`Item::Shared`].
    fn share(&mut self, event: &EventFrame) -> u32 {
        self.cork.shared.push(event.clone());
        (self.cork.shared.len() - 1) as u32
    }

    fn broadcast_room(&mut self, room: RoomKey, frame: u32, except: Option<chat::MemberId>) {
        let members = self.chat.room_members(room);
        broadcast(
            &mut self.conns,
            &mut self.cork,
            &mut self.metrics,
            members,
            frame,
            except,
            None,
        );
    }

    /// A room's `message` event, for every member but those still catching up on the history (it is
    /// in the history, so they get it in order from there).
    fn broadcast_room_message(&mut self, room: RoomKey, frame: u32) {
        let members = self.chat.room_members(room);
        let skip = (!self.catching_up.is_empty()).then_some(&self.catching_up);
        broadcast(
            &mut self.conns,
            &mut self.cork,
            &mut self.metrics,
            members,
            frame,
            None,
            skip,
        );
    }

    /// After a `welcome` whose history was cut after message `after`: the rest follows as the
    /// joiner's socket drains.
    fn start_catch_up(&mut self, member: MemberId, room: RoomKey, after: Option<u64>) {
        if let Some(after) = after {
            self.catching_up.insert(member, (room, after));
        }
    }

    /// Queues the next part of a catching-up member's history (at most `welcome_history_bytes`, so
    /// never near `--max-outbound-bytes`); called when its socket has taken everything before.
    fn pump_catch_up(&mut self, key: ConnKey) {
        let member = key.member();
        let Some(&(room, after)) = self.catching_up.get(&member) else {
            return;
        };
        let part = self
            .chat
            .catch_up(room, after, self.cfg.welcome_history_bytes, self.wall);
        match part.next {
            Some(next) => self.catching_up.insert(member, (room, next)),
            None => self.catching_up.remove(&member),
        };
        for event in &part.frames {
            let frame = self.share(event);
            if let Some(c) = self.conns.get_mut(key.index as usize) {
                self.cork.link(key.index, c, Item::Shared(frame));
                self.metrics.messages_sent += 1;
            }
        }
    }

    /// The peer address of `key`'s connection, for the chat's per-address rate limit (an IPv4 peer
    /// of an IPv6 listener as IPv4). A peer already gone counts as the unspecified address.
    fn peer_ip(&self, key: ConnKey) -> IpAddr {
        self.ip_of
            .get(&key.index)
            .copied()
            .or_else(|| {
                let c = self.conns.get(key.index as usize)?;
                c.stream.peer_addr().ok().map(|a| a.ip())
            })
            .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |ip| {
                ip.to_canonical()
            })
    }

    fn broadcast_global(&mut self, frame: u32) {
        let members = self.chat.global_members();
        broadcast(
            &mut self.conns,
            &mut self.cork,
            &mut self.metrics,
            members,
            frame,
            None,
            None,
        );
    }

    fn arm_housekeeping(&mut self) {
        let ticks = (HOUSEKEEPING.as_millis() / TICK.as_millis()) as Tick;
        self.wheel.insert(self.tick + ticks, Deadline::Housekeeping);
    }

    fn arm_expiry(&mut self, what: Deadline, due: Micros) {
        let ticks = due
            .saturating_sub(self.wall)
            .div_ceil(TICK.as_micros() as u64);
        self.wheel.insert(self.tick + ticks + 1, what);
    }

    fn on_writable(&mut self, index: usize) {
        let Some(c) = self.conns.get(index) else {
            return;
        };
        if c.backlog_bytes() > 0 {
            let key = c.key(index);
            self.flush_one(key);
        }
    }

    /// Writes one connection's pending output and applies the consequences:
    /// slow consumer, FIN after our close, closing after the last bytes.
    fn flush_one(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(key.index as usize) else {
            return;
        };
        if c.gen != key.gen {
            return;
        }
        match conn::flush(c, &self.cork) {
            Ok(n) => self.metrics.bytes_sent += n as u64,
            Err(e) => {
                debug!("write on {}: {e}", key.index);
                self.drop_conn(key, Leave::Announce);
                return;
            }
        }
        let c = &mut self.conns[key.index as usize];
        match c.phase {
            Phase::Open { .. } if c.backlog_bytes() > self.cfg.max_outbound_bytes => {
                self.metrics.slow_consumers += 1;
                debug!(
                    "slow consumer {}: {} bytes pending",
                    key.index,
                    c.backlog_bytes()
                );
                c.truncate_backlog();
                self.fail(key, CloseCode::Policy, "slow consumer", Leave::Announce);
                // The close frame is in the cork: write it now if the socket allows.
                self.flush_one(key);
            }
            Phase::Open { .. } if c.backlog_bytes() == 0 && !self.catching_up.is_empty() => {
                self.pump_catch_up(key);
            }
            Phase::Finishing { .. } if c.backlog_bytes() == 0 => self.doomed.push(key),
            Phase::ClosingByUs {
                fin_sent: false, ..
            } if c.backlog_bytes() == 0 => {
                // Our close is out: send FIN and wait for the peer's.
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
                if let Phase::ClosingByUs { fin_sent, .. } = &mut c.phase {
                    *fin_sent = true;
                }
            }
            _ => {}
        }
    }

    /// Flushes every connection written to this turn, then closes the doomed.
    fn end_turn(&mut self) {
        loop {
            if self.cork.dirty.is_empty() && self.doomed.is_empty() {
                break;
            }
            let dirty = std::mem::take(&mut self.cork.dirty);
            for &index in &dirty {
                if let Some(c) = self.conns.get(index as usize) {
                    let key = c.key(index as usize);
                    self.flush_one(key);
                }
            }
            let mut dirty = dirty;
            dirty.clear();
            if self.cork.dirty.is_empty() {
                self.cork.clear();
                self.cork.dirty = dirty;
            }
            for key in std::mem::take(&mut self.doomed) {
                self.drop_conn(key, Leave::Announce);
            }
        }
    }

    /// Closes the socket and forgets the connection.
    fn drop_conn(&mut self, key: ConnKey, leave: Leave) {
        let Some(c) = self.conns.get_mut(key.index as usize) else {
            return;
        };
        if c.gen != key.gen {
            return;
        }
        if let Phase::Open { endpoint, .. } = std::mem::replace(&mut c.phase, Phase::Busy) {
            self.detach(key, endpoint, leave);
        }
        let c = self.conns.remove(key.index as usize);
        if c.cork_head != NONE {
            // Its cork list dies with it; the turn's dirty list skips missing slots.
            self.cork.dirty.retain(|&i| i != key.index);
        }
        if let Some(ip) = self.ip_of.remove(&key.index) {
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
        debug!("connection {} closed", key.index);
    }

    // ---- timers ----------------------------------------------------------

    fn fire_timers(&mut self) {
        let mut due = std::mem::take(&mut self.fired);
        self.wheel
            .advance(self.now, |tick, what| due.push((tick, what)));
        for (tick, what) in due.drain(..) {
            match what {
                Deadline::Conn(key) => self.on_conn_timer(key, tick as u32),
                Deadline::Room(room) => {
                    if let Some(next) = self.chat.expire_room(room, self.wall) {
                        self.arm_expiry(Deadline::Room(room), next);
                    }
                }
                Deadline::Global => {
                    if let Some(next) = self.chat.expire_global(self.wall) {
                        self.arm_expiry(Deadline::Global, next);
                    }
                }
                Deadline::Housekeeping => {
                    if let Some(free) = memory::release_free_heap() {
                        debug!("gave {} MiB of free heap back", free >> 20);
                    }
                    self.arm_housekeeping();
                }
            }
        }
        // Like the wheel's scratch: a burst must not stay resident.
        if due.capacity() <= 4096 {
            self.fired = due;
        }
    }

    fn on_conn_timer(&mut self, key: ConnKey, due: u32) {
        let tick = self.tick32();
        let (ping, idle) = (self.ping_ticks, self.idle_ticks);
        let Some(c) = self.conns.get_mut(key.index as usize) else {
            return;
        };
        if c.gen != key.gen || c.timer_due != due {
            return; // a stale entry: the connection re-armed since
        }
        match &mut c.phase {
            Phase::AwaitingRequest { deadline } if tick < *deadline => {
                let d = *deadline;
                self.arm(key, d);
            }
            Phase::AwaitingRequest { .. } => {
                self.metrics.handshake_timeouts += 1;
                self.metrics.handshake_failures += 1;
                debug!("handshake timeout on {}", key.index);
                self.drop_conn(key, Leave::Announce);
            }
            Phase::Open { .. } => {
                let silent = tick.saturating_sub(c.last_rx);
                if silent >= idle {
                    self.metrics.idle_timeouts += 1;
                    debug!("idle timeout on {}", key.index);
                    self.drop_conn(key, Leave::Announce);
                } else if silent >= ping && !c.pinged {
                    c.pinged = true;
                    let next = c.last_rx + idle;
                    self.send_frame_local(key, OpCode::Ping, b"");
                    self.arm(key, next);
                } else {
                    let next = c.last_rx + if c.pinged { idle } else { ping };
                    self.arm(key, next.max(tick + 1));
                }
            }
            Phase::ClosingByUs { deadline, .. } | Phase::Finishing { deadline }
                if tick < *deadline =>
            {
                let d = *deadline;
                self.arm(key, d);
            }
            _ => self.drop_conn(key, Leave::Announce),
        }
    }
}

/// Why frame handling stopped early.
enum Stop {
    /// Fail the connection with this code.
    Fail(CloseCode, &'static str),
    /// The peer closed and we answered.
    Echoed,
}

/// Links one shared frame into every member's list (one node per member, no copy), but for
/// `except` and the members in `skip`.
fn broadcast(
    conns: &mut Slab<Conn>,
    cork: &mut Cork,
    metrics: &mut Metrics,
    members: &[chat::MemberId],
    frame: u32,
    except: Option<chat::MemberId>,
    skip: Option<&HashMap<MemberId, (RoomKey, u64)>>,
) {
    for &m in members {
        if Some(m) == except || skip.is_some_and(|s| s.contains_key(&m)) {
            continue;
        }
        let key = ConnKey::from_member(m);
        if let Some(c) = conns.get_mut(key.index as usize) {
            if c.gen == key.gen {
                cork.link(key.index, c, Item::Shared(frame));
                metrics.messages_sent += 1;
            }
        }
    }
}
