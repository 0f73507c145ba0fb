//! The daemon's service: what runs on the reactor.
//!
//! Connects the transport's events to the chat, the HTTP answers and the cluster bridge, and turns
//! what they decide into frames to send. It holds no socket and knows no bit layout: the reactor
//! hands it decoded things through [`Service`](crate::reactor::Service) and takes back frames through [`Io`].
//!
//! - a request head → [`http::route`]; a plain route → [`http::answer`] over a read-only
//!   [`http::View`]; a WebSocket route → the Origin check, then [`Answer::Upgrade`];
//! - an upgrade through → join the global channel, a room (locally, or through the cluster: see
//!   `cluster`), or the echo endpoint; `welcome` and the `join` broadcast;
//! - a text message → [`Chat::post`] (or the cluster's post request) → one shared frame for every
//!   member;
//! - a connection gone → leave, and the `leave` broadcast;
//! - a deadline → expiry of a room's or the global channel's history;
//! - a wake-up → the bridge's notices, applied to the chat's replica (`cluster`).

pub mod auth;
mod cluster;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use log::debug;

use crate::chat::{
    self, Chat, ChatConfig, Checked, DemoPost, EventFrame, GlobalPost, Joined, MemberId, Post,
    Presence, Resume, RoomKey, Vocabulary,
};
use crate::config::{Compat, Config, Secret};
use crate::http::{self, Route, Routes};
use crate::protocol::CloseCode;
use crate::protocol::OpCode;
use crate::reactor::{Answer, ConnKey, Departure, Io, KeepAlive, Message, Reactor, Service};
use cluster::ClusterLink;

/// What an open WebSocket is attached to.
#[derive(Debug, Clone, Copy)]
pub enum Endpoint {
    Echo,
    Global,
    Room(RoomKey),
    /// Cluster mode: the room join is with the cluster bridge; the `welcome` comes with its answer,
    /// and text frames wait (in the link's `Joining` entry) until then.
    Joining,
    /// `--compat fastapi`: the FastAPI documentation example's `/ws/{client_id}` (on this node only).
    Demo,
}

/// A WebSocket route's parameters, from the request to the 101.
#[derive(Debug)]
pub enum Opening {
    Echo,
    Global,
    Room {
        /// Percent-decoded, not yet cleaned.
        room: String,
        client: String,
        since: Option<u64>,
        epoch: Option<String>,
        /// `?device=`: the page's per-browser id (two tabs, one presence).
        device: Option<String>,
    },
    /// `/ws/{client_id}`, percent-decoded, not yet cleaned.
    Demo {
        client: String,
    },
}

/// An upgrade the server admitted: where it goes, and (under `--auth token`) whose token it carried.
#[derive(Debug)]
pub struct Admitted {
    pub target: Opening,
    pub session: Option<Session>,
    /// The `Sec-WebSocket-Protocol` value the 101 echoes (when the token came that way).
    pub protocol: Option<String>,
}

/// What [`Server::admit`] lets through: the session of a WebSocket opened with a token, and the
/// subprotocol its 101 echoes.
type Admission = (Option<Session>, Option<String>);

/// A connection opened with a token (`--auth token`).
#[derive(Debug, Clone)]
pub struct Session {
    /// The name the token grants; a refresh must name the same.
    pub name: String,
    /// The peer's address: its refreshes take from its token check budget.
    pub ip: IpAddr,
    /// When the token expires, seconds since the Unix epoch; moved on by a refresh.
    pub exp: u64,
}

/// Close code for a connection whose token expired without a refresh (docs/protocol.md): in the
/// 4000–4999 range RFC 6455 §7.4.2 leaves to applications; the reason says "token expired".
pub const TOKEN_EXPIRED: CloseCode = CloseCode::Other(4001);

/// Close code for a connection closed through the server API's `disconnect` (docs/protocol.md).
pub const DISCONNECTED: CloseCode = CloseCode::Other(4002);

/// The longest a token deadline is armed ahead; a later `exp` is re-armed when this one fires.
const TOKEN_TIMER_MAX_MICROS: u64 = 24 * 3600 * 1_000_000;

/// What one of the server's deadlines is for.
#[derive(Debug, Clone, Copy)]
pub enum Timer {
    /// When the token of a connection expires (unless refreshed by then).
    Token(ConnKey),
    /// When the oldest message of a room expires.
    Room(RoomKey),
    /// When the oldest message of the global channel expires.
    Global,
}

/// The chat member a connection is.
fn member(conn: ConnKey) -> MemberId {
    MemberId(conn.to_u64())
}

fn conn_of(m: MemberId) -> ConnKey {
    ConnKey::from_u64(m.0)
}

/// The daemon: chat, HTTP and cluster on one reactor.
pub struct Server {
    chat: Chat,
    allowed_origins: Vec<String>,
    /// The optional routes served: `/echo` unless `--no-echo`, `/ws/{client_id}` under `--compat`.
    routes: Routes,
    /// Cluster mode state; `None` without `--redis`.
    cluster: Option<ClusterLink>,
    /// Room members whose `welcome` history was cut: their room and the last message id sent. The
    /// rest goes out as their socket drains ([`Service::handle_drained`]); live `message`
    /// broadcasts skip them (those messages are in the history, so they come in order from there).
    catching_up: HashMap<MemberId, (RoomKey, u64)>,
    /// `--auth token`: the token verifier; `None` in open mode.
    auth: Option<Arc<auth::Verifier>>,
    /// Connections opened with a token, with when it expires.
    sessions: HashMap<MemberId, Session>,
    /// `--token-checks-per-ip`: token verifications left to each peer address.
    token_checks: chat::AddressBuckets,
    /// `--metrics-token-file`: the bearer token /metrics requires.
    metrics_token: Option<Secret>,
    /// `--api-key-file`: the key of the server API; without it `/api/` answers 404.
    api_key: Option<Secret>,
}

/// A bound daemon, ready to serve.
pub struct Daemon {
    reactor: Reactor,
    server: Server,
}

impl Daemon {
    /// Binds the listener and sets up the chat (and the cluster bridge under `--redis`).
    pub fn bind(cfg: Config) -> std::io::Result<Daemon> {
        let reactor = Reactor::bind(&cfg)?;
        let cluster = match &cfg.redis {
            Some(url) => Some(ClusterLink::start(&cfg, url, reactor.waker()?)?),
            None => None,
        };
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
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
        )
        .with_vocabulary(match cfg.compat {
            None => Vocabulary::Wisp,
            Some(Compat::Fastapi) => Vocabulary::FastApi,
        });
        Ok(Daemon {
            reactor,
            server: Server {
                chat,
                allowed_origins: cfg.allowed_origins,
                routes: Routes {
                    echo: cfg.echo,
                    demo: cfg.compat == Some(Compat::Fastapi),
                },
                cluster,
                catching_up: HashMap::new(),
                auth: cfg.auth,
                sessions: HashMap::new(),
                token_checks: chat::AddressBuckets::new(cfg.token_checks_per_ip.map(|r| {
                    chat::RateLimit {
                        tokens: r.tokens,
                        per_secs: r.per_secs,
                    }
                })),
                metrics_token: cfg.metrics_token,
                api_key: cfg.api_key,
            },
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.reactor.local_addr()
    }

    /// Serves until SIGINT or SIGTERM (SPEC §6).
    pub fn run(self) -> std::io::Result<()> {
        self.reactor.run(self.server)
    }
}

impl Service for Server {
    type Endpoint = Endpoint;
    type Opening = Admitted;
    type Timer = Timer;

    fn subprotocol(admitted: &Admitted) -> Option<&str> {
        admitted.protocol.as_deref()
    }

    /// Bodies are read for the server API only, and only once its key matched: nobody else can make
    /// the daemon hold 64 KiB for them.
    fn body_limit(&self, req: &crate::protocol::handshake::Request<'_>) -> usize {
        match &self.api_key {
            Some(key)
                if req.method == crate::protocol::handshake::Method::Post
                    && req.path().starts_with("/api/")
                    && auth::bearer_matches(req, &key.0) =>
            {
                crate::protocol::handshake::MAX_BODY
            }
            _ => 0,
        }
    }

    fn handle_request(
        &mut self,
        io: &mut Io<'_, Self>,
        conn: ConnKey,
        peer: IpAddr,
        req: &crate::protocol::handshake::Request<'_>,
    ) -> Answer<Admitted> {
        let route = http::route_with(req.path(), req.query(), self.routes);
        if let Route::Api { room, call } = route {
            return self.handle_api(io, conn, req, room, call);
        }
        if route == Route::Metrics {
            if let Some(key) = &self.metrics_token {
                if !auth::bearer_matches(req, &key.0) {
                    return self.refuse(io, conn, 401, "metrics token missing or wrong");
                }
            }
        }
        let (session, protocol) = match self.admit(req, &route, peer, io.wall()) {
            Ok(admitted) => admitted,
            Err((status, why)) => return self.refuse(io, conn, status, why),
        };
        if route.is_websocket() {
            if let Err(status) = http::check_origin(&self.allowed_origins, req.origin) {
                io.metrics().handshake_failures += 1;
                debug!(
                    "refused upgrade on {}: origin {:?} not allowed",
                    conn.index(),
                    req.origin
                );
                return Answer::Respond(http::error_response(status, ""), KeepAlive::No);
            }
            let target = match route {
                Route::Echo => Opening::Echo,
                Route::Global => Opening::Global,
                Route::Room {
                    room,
                    client,
                    since,
                    epoch,
                    device,
                } => Opening::Room {
                    room: http::percent_decode(room).into_owned(),
                    // With a token, the name is the token's, whatever the path says.
                    client: match &session {
                        Some(s) => s.name.clone(),
                        None => http::percent_decode(client).into_owned(),
                    },
                    since,
                    epoch,
                    device,
                },
                Route::Demo { client } => Opening::Demo {
                    client: http::percent_decode(client).into_owned(),
                },
                _ => unreachable!("bug: not a WebSocket route"),
            };
            return Answer::Upgrade(Admitted {
                target,
                session,
                protocol,
            });
        }
        if let Some(later) = self.view_from_redis(conn, req, &route) {
            return later;
        }
        let (metrics, transport) = io.transport();
        let view = http::View {
            chat: &self.chat,
            metrics,
            transport,
            uptime_s: io.uptime().as_secs(),
            redis_up: self.cluster.as_ref().map(|c| c.up),
            wall: io.wall(),
            allowed_origins: &self.allowed_origins,
            auth_token: self.auth.is_some(),
        };
        let bytes = http::answer(&route, req, &view);
        let keep = if matches!(
            req.method,
            crate::protocol::handshake::Method::Other | crate::protocol::handshake::Method::Post
        ) {
            KeepAlive::No
        } else {
            KeepAlive::Yes
        };
        Answer::Respond(bytes, keep)
    }

    fn handle_open(
        &mut self,
        io: &mut Io<'_, Self>,
        conn: ConnKey,
        peer: IpAddr,
        admitted: Admitted,
    ) -> Endpoint {
        let m = member(conn);
        if let Some(session) = admitted.session {
            arm_token(io, conn, session.exp);
            self.sessions.insert(m, session);
        }
        match admitted.target {
            Opening::Echo => Endpoint::Echo,
            Opening::Global => {
                self.chat.global_join(m, peer, io.wall());
                Endpoint::Global
            }
            Opening::Demo { client } => {
                self.chat.demo_join(m, peer, &client, io.wall());
                Endpoint::Demo
            }
            Opening::Room {
                room,
                client,
                since,
                epoch,
                device,
            } => {
                if let Some(c) = self.cluster.as_mut().filter(|c| c.up) {
                    // The cluster de-duplicates the name; `welcome` waits for its answer.
                    c.begin_join(m, peer, &room, &client, since, epoch);
                    return Endpoint::Joining;
                }
                if let Some(c) = self.cluster.as_mut() {
                    // Redis is away: a local join, in a room the feeds follow when it is back.
                    c.follow_local(&chat::clean_room(&room));
                }
                // Two tabs of one person (same name and device id) are one entry: local only, the
                // cluster de-duplicates names in Redis, device or not.
                let joined = self.chat.join_with_token(
                    &room,
                    &client,
                    device.as_deref(),
                    m,
                    peer,
                    Resume {
                        since,
                        epoch: epoch.as_deref(),
                    },
                    io.wall(),
                );
                self.greet(io, conn, &joined, since);
                if joined.announce {
                    self.announce(
                        io,
                        joined.key,
                        Presence::Join,
                        &joined.name,
                        &joined.join_event,
                        m,
                    );
                }
                Endpoint::Room(joined.key)
            }
        }
    }

    fn handle_message(
        &mut self,
        io: &mut Io<'_, Self>,
        conn: ConnKey,
        endpoint: Endpoint,
        message: Message<'_>,
    ) -> Result<(), (CloseCode, &'static str)> {
        match message {
            Message::Text(text) => {
                self.on_text(io, conn, endpoint, text);
                Ok(())
            }
            Message::Binary(data) => match endpoint {
                Endpoint::Echo => {
                    io.send_frame(conn, OpCode::Binary, data);
                    Ok(())
                }
                // SPEC §4.1, §4.4: binary messages are refused with 1003.
                _ => Err((CloseCode::Unsupported, "binary messages are not accepted")),
            },
        }
    }

    fn handle_closed(
        &mut self,
        io: &mut Io<'_, Self>,
        conn: ConnKey,
        endpoint: Endpoint,
        why: Departure,
    ) {
        let m = member(conn);
        self.sessions.remove(&m);
        match endpoint {
            Endpoint::Echo => {}
            Endpoint::Global => self.chat.global_leave(m),
            Endpoint::Demo => {
                if let (Some(line), Departure::Left) = (self.chat.demo_leave(m), why) {
                    let members = self.chat.demo_members();
                    io.broadcast(&line, members.iter().map(|&m| conn_of(m)));
                }
            }
            Endpoint::Joining => {
                if let Some(room) = self.cluster.as_mut().and_then(|c| c.cancel_join(m)) {
                    self.maybe_unfollow(&room);
                }
            }
            Endpoint::Room(room) => {
                self.catching_up.remove(&m);
                // The seed rooms app names who left; Wisp's own `leave` event carries the name.
                let name = (self.chat.vocabulary() == Vocabulary::FastApi)
                    .then(|| self.chat.member_name(room, m).map(str::to_owned))
                    .flatten();
                let room_name = self
                    .cluster
                    .as_ref()
                    .and_then(|_| self.chat.room_id(room).map(str::to_owned));
                let event = self.chat.leave(room, m, io.wall());
                let clustered = match self.cluster.as_ref() {
                    Some(c) => {
                        // At shutdown the bridge takes all our members out at once.
                        if why == Departure::Left {
                            c.send_leave(m);
                        }
                        c.up
                    }
                    None => false,
                };
                // In the cluster, the `leave` comes back on the feed, to every node alike.
                if let (Some(event), Departure::Left, false) = (event, why, clustered) {
                    let name = name.as_deref().unwrap_or_default();
                    self.announce_to(io, room, Presence::Leave, name, &event, None);
                }
                if let Some(room_name) = room_name {
                    self.maybe_unfollow(&room_name);
                }
            }
        }
    }

    fn handle_timer(&mut self, io: &mut Io<'_, Self>, timer: Timer) {
        match timer {
            Timer::Token(conn) => {
                let m = member(conn);
                let Some(exp) = self.sessions.get(&m).map(|s| s.exp) else {
                    return;
                };
                if exp.saturating_mul(1_000_000) > io.wall() {
                    // Refreshed meanwhile (that refresh armed its own deadline), or armed early
                    // for a far `exp`.
                    arm_token(io, conn, exp);
                    return;
                }
                self.sessions.remove(&m);
                io.metrics().auth_expired += 1;
                debug!("token of {} expired", conn.index());
                io.close(conn, TOKEN_EXPIRED, "token expired");
            }
            Timer::Room(room) => {
                if let Some(next) = self.chat.expire_room(room, io.wall()) {
                    io.arm_at(Timer::Room(room), next);
                }
            }
            Timer::Global => {
                if let Some(next) = self.chat.expire_global(io.wall()) {
                    io.arm_at(Timer::Global, next);
                }
            }
        }
    }

    fn handle_wake(&mut self, io: &mut Io<'_, Self>) {
        let notices = match self.cluster.as_ref() {
            Some(c) => c.drain(),
            None => return,
        };
        for notice in notices {
            self.on_notice(io, notice);
        }
    }

    /// A catching-up member has taken everything sent so far: queue the next part of the history
    /// (at most `--welcome-history-bytes`, so never near `--max-outbound-bytes`).
    fn handle_drained(&mut self, io: &mut Io<'_, Self>, conn: ConnKey, _endpoint: Endpoint) {
        let m = member(conn);
        let Some(&(room, after)) = self.catching_up.get(&m) else {
            return;
        };
        let part = self
            .chat
            .catch_up(room, after, self.chat.welcome_history_bytes(), io.wall());
        match part.next {
            Some(next) => {
                self.catching_up.insert(m, (room, next));
                io.notify_drained(conn);
            }
            None => {
                self.catching_up.remove(&m);
            }
        }
        for event in &part.frames {
            let shared = io.share(event);
            io.send_shared(conn, shared);
        }
    }

    fn handle_exit(&mut self) {
        if let Some(c) = self.cluster.take() {
            c.shutdown();
        }
    }
}

impl Server {
    /// Applies one text message from an open connection.
    fn on_text(&mut self, io: &mut Io<'_, Self>, conn: ConnKey, endpoint: Endpoint, text: &str) {
        let m = member(conn);
        if self.auth.is_some() && text.contains("\"refresh\"") {
            if let Some(token) = refresh_token(text) {
                return self.on_refresh(io, conn, endpoint, &token);
            }
        }
        // A `typing` signal goes to the room's other members on this node (at most one per member
        // per `chat::TYPING_INTERVAL`), never stored nor sent through the cluster.
        if let Endpoint::Room(room) = endpoint {
            if let Some(relay) = self.chat.typing(room, m, text, io.wall()) {
                if let Some(event) = relay {
                    self.broadcast_room(io, room, &event, Some(m));
                }
                return;
            }
        }
        let clustered = self.cluster.as_ref().is_some_and(|c| c.up);
        match endpoint {
            Endpoint::Echo => io.send_frame(conn, OpCode::Text, text.as_bytes()),
            Endpoint::Demo => match self.chat.demo_post(m, text, io.wall()) {
                DemoPost::Broadcast { own, all } => {
                    io.send_text(conn, own.as_bytes());
                    let members = self.chat.demo_members();
                    io.broadcast(&all, members.iter().map(|&m| conn_of(m)));
                }
                DemoPost::RateLimited { error } => {
                    debug!("rate limited {}", conn.index());
                    io.send_text(conn, error.as_bytes());
                }
                DemoPost::Dropped => {}
            },
            Endpoint::Global if clustered => match self.chat.global_admit(m, io.wall()) {
                // Delivered, to the sender too, when it comes back on the feed.
                Ok(()) => self.bridge_send(cluster::Request::GlobalPost {
                    text: text.to_owned(),
                }),
                Err(Some(error)) => {
                    debug!("rate limited {}", conn.index());
                    io.send_text(conn, error.as_bytes());
                }
                Err(None) => {}
            },
            Endpoint::Global => match self.chat.global_post(m, text, io.wall()) {
                GlobalPost::Broadcast { frame, arm_expiry } => {
                    self.broadcast_global(io, &frame);
                    if let Some(due) = arm_expiry {
                        io.arm_at(Timer::Global, due);
                    }
                }
                GlobalPost::RateLimited { error } => {
                    debug!("rate limited {}", conn.index());
                    io.send_text(conn, error.as_bytes());
                }
                GlobalPost::Dropped => {}
            },
            Endpoint::Room(room) if clustered => {
                match self.chat.check_post(room, m, text, io.wall()) {
                    Checked::Accept(content) => self.bridge_send(cluster::Request::Post {
                        conn: m.0,
                        content: content.into_owned(),
                    }),
                    Checked::Reply { error } => {
                        debug!("chat error for {}: {error}", conn.index());
                        io.send_text(conn, error.as_bytes());
                    }
                    Checked::Ignored => {}
                }
            }
            Endpoint::Room(room) => {
                let post = self.chat.post(room, m, text, io.wall());
                self.apply_post(io, conn, room, post);
            }
            Endpoint::Joining => {
                let refused = self
                    .cluster
                    .as_mut()
                    .is_some_and(|c| !c.queue_while_joining(m, text));
                if refused {
                    io.metrics().rate_limited += 1;
                    debug!("rate limited {} while joining", conn.index());
                    let error = self.chat.joining_overflow_error(io.wall());
                    io.send_text(conn, error.as_bytes());
                }
            }
        }
    }

    fn apply_post(&mut self, io: &mut Io<'_, Self>, conn: ConnKey, room: RoomKey, post: Post) {
        match post {
            Post::Broadcast { event, arm_expiry } => {
                self.broadcast_room_message(io, room, &event);
                if let Some(due) = arm_expiry {
                    io.arm_at(Timer::Room(room), due);
                }
            }
            Post::Reply { error } => {
                debug!("chat error for {}: {error}", conn.index());
                io.send_text(conn, error.as_bytes());
            }
            Post::Ignored => {}
        }
    }

    /// Greets a member that has just joined a room: Wisp's `welcome` (the rest of a cut history
    /// following as the socket drains); under `--compat fastapi`, which has no `welcome`, the
    /// history as `message` events, after `since` when the upgrade asked for it.
    fn greet(&mut self, io: &mut Io<'_, Self>, conn: ConnKey, joined: &Joined, since: Option<u64>) {
        if self.chat.vocabulary() == Vocabulary::Wisp {
            io.send_text(conn, joined.welcome.as_bytes());
            self.start_catch_up(io, conn, joined.key, joined.catch_up);
            return;
        }
        let budget = self.chat.welcome_history_bytes();
        let part = self
            .chat
            .catch_up(joined.key, since.unwrap_or(0), budget, io.wall());
        for event in &part.frames {
            let shared = io.share(event);
            io.send_shared(conn, shared);
        }
        self.start_catch_up(io, conn, joined.key, part.next);
    }

    /// Tells the room that `name` joined (everyone but the joiner, `except`, gets `event`).
    fn announce(
        &mut self,
        io: &mut Io<'_, Self>,
        room: RoomKey,
        kind: Presence,
        name: &str,
        event: &EventFrame,
        joiner: MemberId,
    ) {
        self.announce_to(io, room, kind, name, event, Some(joiner));
    }

    /// Tells the members of `room` that `name` joined or left: Wisp's `join`/`leave` `event` to all
    /// but `except`; under `--compat fastapi` the seed rooms app's `system` line and `presence`
    /// list instead, to everyone, the joiner included, as that app does.
    fn announce_to(
        &mut self,
        io: &mut Io<'_, Self>,
        room: RoomKey,
        kind: Presence,
        name: &str,
        event: &EventFrame,
        except: Option<MemberId>,
    ) {
        if self.chat.vocabulary() == Vocabulary::Wisp {
            return self.broadcast_room(io, room, event, except);
        }
        if let Some(frames) = self.chat.compat_presence(room, kind, name, io.wall()) {
            for frame in &frames {
                self.broadcast_room(io, room, frame, None);
            }
        }
    }

    /// A presence change from the cluster, told to this node's members of its room.
    fn deliver(&mut self, io: &mut Io<'_, Self>, d: &chat::Delivery) {
        self.announce_to(io, d.room, d.kind, &d.name, &d.event, d.except);
    }

    /// Queues `event` once for every member of `room` (but `except`).
    fn broadcast_room(
        &self,
        io: &mut Io<'_, Self>,
        room: RoomKey,
        event: &EventFrame,
        except: Option<MemberId>,
    ) {
        let members = self.chat.room_members(room);
        io.broadcast(
            event,
            members
                .iter()
                .filter(|&&m| Some(m) != except)
                .map(|&m| conn_of(m)),
        );
    }

    /// Queues a room's `message` event for every member but those still catching up on the history.
    fn broadcast_room_message(&self, io: &mut Io<'_, Self>, room: RoomKey, event: &EventFrame) {
        if self.catching_up.is_empty() {
            return self.broadcast_room(io, room, event, None);
        }
        let members = self.chat.room_members(room);
        io.broadcast(
            event,
            members
                .iter()
                .filter(|m| !self.catching_up.contains_key(m))
                .map(|&m| conn_of(m)),
        );
    }

    /// After a `welcome` whose history was cut after message `after`: the rest follows as the
    /// joiner's socket drains.
    fn start_catch_up(
        &mut self,
        io: &mut Io<'_, Self>,
        conn: ConnKey,
        room: RoomKey,
        after: Option<u64>,
    ) {
        if let Some(after) = after {
            self.catching_up.insert(member(conn), (room, after));
            io.notify_drained(conn);
        }
    }

    /// Queues `frame` once for every member of the global channel.
    fn broadcast_global(&self, io: &mut Io<'_, Self>, frame: &EventFrame) {
        let members = self.chat.global_members();
        io.broadcast(frame, members.iter().map(|&m| conn_of(m)));
    }

    /// Under `--auth token`: checks the token of a WebSocket route or a history view and what it
    /// grants. `Err` is the status to refuse with (401 no or bad token, 403 not granted, 409 name
    /// in use) and why, for the debug log. Other routes, and every route in open mode, pass.
    fn admit(
        &mut self,
        req: &crate::protocol::handshake::Request<'_>,
        route: &Route<'_>,
        peer: IpAddr,
        now: u64,
    ) -> Result<Admission, (u16, &'static str)> {
        let Some(verifier) = &self.auth else {
            return Ok((None, None));
        };
        let history = matches!(
            route,
            Route::Messages { .. } | Route::Rooms | Route::RoomMessages { .. }
        );
        if !route.is_websocket() && !history {
            return Ok((None, None));
        }
        let (token, carrier) = auth::token_of(req).ok_or((401, "no token"))?;
        // A verification costs up to a third of a millisecond (ES256), forged or not: each address
        // gets a budget of them.
        if !self.token_checks.try_take(peer, now) {
            return Err((429, "too many token checks from this address"));
        }
        let grant = verifier.verify(&token).map_err(|r| (401, rejected(r)))?;
        let room = |raw: &str| chat::sanitize_name(&http::percent_decode(raw), chat::DEFAULT_ROOM);
        match route {
            Route::Room { room: raw, .. } => {
                let room = room(raw);
                if !grant.may_join(&room) {
                    return Err((403, "room not granted"));
                }
                if self.chat.name_in_use(&room, &grant.name) {
                    return Err((409, "name in use in that room"));
                }
            }
            Route::RoomMessages { room: raw, .. }
                if !(grant.history && grant.may_join(&room(raw))) =>
            {
                return Err((403, "room history not granted"));
            }
            Route::Messages { .. } | Route::Rooms if !grant.history => {
                return Err((403, "history not granted"));
            }
            _ => {}
        }
        let protocol = match carrier {
            auth::Carrier::Subprotocol(p) => Some(p.to_owned()),
            _ => None,
        };
        let session = route.is_websocket().then_some(Session {
            ip: peer,
            name: grant.name,
            exp: grant.exp,
        });
        Ok((session, protocol))
    }

    /// The server API (`--api-key-file`): `Authorization: Bearer KEY`, compared in constant time.
    fn handle_api(
        &mut self,
        io: &mut Io<'_, Self>,
        conn: ConnKey,
        req: &crate::protocol::handshake::Request<'_>,
        raw_room: &str,
        call: http::ApiCall,
    ) -> Answer<Admitted> {
        use crate::protocol::handshake::Method;
        let Some(key) = &self.api_key else {
            return Answer::Respond(http::error_response(404, ""), KeepAlive::No);
        };
        if !auth::bearer_matches(req, &key.0) {
            return self.refuse(io, conn, 401, "API key missing or wrong");
        }
        let keep = if req.keep_alive && !req.has_body {
            KeepAlive::Yes
        } else {
            KeepAlive::No
        };
        let json = |status: u16, body: &str| {
            let resp = http::Response {
                status,
                content_type: "application/json",
                body: body.as_bytes(),
                extra: "",
            };
            Answer::Respond(
                http::write_response(&resp, keep == KeepAlive::Yes, req.method == Method::Head),
                keep,
            )
        };
        let bad = |why: &str| {
            let body = serde_json::json!({"error": "bad_request", "message": why}).to_string();
            json(400, &body)
        };
        let room = chat::sanitize_name(&http::percent_decode(raw_room), chat::DEFAULT_ROOM);
        match (call, req.method) {
            (http::ApiCall::Messages, Method::Get | Method::Head) => {
                let query = req.query();
                let param = |name| query.and_then(|q| http::query_param(q, name));
                let body = self.chat.room_messages_json(
                    &http::percent_decode(raw_room),
                    param("since").and_then(|v| v.parse().ok()),
                    param("limit").and_then(|v| v.parse().ok()),
                    io.wall(),
                );
                json(200, &body)
            }
            (http::ApiCall::Presence, Method::Get | Method::Head) => {
                let body =
                    serde_json::json!({"room_id": room, "users": self.chat.room_users(&room)});
                json(200, &body.to_string())
            }
            (http::ApiCall::Messages | http::ApiCall::Disconnect, Method::Post) => {
                if req.has_body {
                    return Answer::Respond(http::error_response(413, ""), KeepAlive::No);
                }
                let Ok(serde_json::Value::Object(body)) =
                    serde_json::from_slice::<serde_json::Value>(req.body)
                else {
                    return bad("the body must be a JSON object");
                };
                let Some(client) = body.get("client_id").and_then(|v| v.as_str()) else {
                    return bad("client_id must be a string");
                };
                let client = chat::sanitize_name(client, "");
                if client.is_empty() {
                    return bad("client_id is empty");
                }
                if call == http::ApiCall::Disconnect {
                    let n = self.disconnect(io, &room, &client);
                    return json(200, &serde_json::json!({"disconnected": n}).to_string());
                }
                let Some(content) = body.get("content").and_then(|v| v.as_str()) else {
                    return bad("content must be a string");
                };
                if content.trim().is_empty() {
                    return bad("content is empty");
                }
                if self.cluster.as_ref().is_some_and(|c| c.up) {
                    // The id comes from Redis, after this answer: the message reaches every
                    // node's members (here too) from the feed, like a member's.
                    self.bridge_send(cluster::Request::Publish {
                        room,
                        name: client,
                        content: content.trim().to_owned(),
                    });
                    return json(202, r#"{"status":"accepted"}"#);
                }
                match self.publish_locally(io, &room, &client, content) {
                    Some(event) => json(200, &event),
                    None => bad("content is empty"),
                }
            }
            _ => Answer::Respond(
                http::error_response(405, "Allow: GET, HEAD, POST\r\n"),
                KeepAlive::No,
            ),
        }
    }

    /// Stores and delivers a server API message on this daemon alone; returns its event.
    fn publish_locally(
        &mut self,
        io: &mut Io<'_, Self>,
        room: &str,
        name: &str,
        content: &str,
    ) -> Option<String> {
        let (key, post) = self.chat.publish(room, name, content, io.wall())?;
        let Post::Broadcast { event, arm_expiry } = post else {
            unreachable!("bug: publish stores or refuses")
        };
        self.broadcast_room_message(io, key, &event);
        if let Some(due) = arm_expiry {
            io.arm_at(Timer::Room(key), due);
        }
        Some(event.text().to_owned())
    }

    /// Closes every local connection named `client` in room `room` with 4002; returns how many.
    fn disconnect(&mut self, io: &mut Io<'_, Self>, room: &str, client: &str) -> usize {
        let Some(key) = self.chat.room_key(room) else {
            return 0;
        };
        let named: Vec<MemberId> = self
            .chat
            .room_members(key)
            .iter()
            .copied()
            .filter(|&m| self.chat.member_name(key, m) == Some(client))
            .collect();
        for &m in &named {
            debug!("API disconnects {}", conn_of(m).index());
            io.close(conn_of(m), DISCONNECTED, "disconnected by the server");
        }
        named.len()
    }

    /// Answers a request refused for its credentials, counted and logged at debug (never the token).
    fn refuse(
        &self,
        io: &mut Io<'_, Self>,
        conn: ConnKey,
        status: u16,
        why: &'static str,
    ) -> Answer<Admitted> {
        io.metrics().auth_refused += 1;
        debug!("refused request on {}: {status} {why}", conn.index());
        let extra = match status {
            401 => "WWW-Authenticate: Bearer\r\n",
            429 => "Retry-After: 1\r\n",
            _ => "",
        };
        Answer::Respond(http::error_response(status, extra), KeepAlive::No)
    }

    /// `{"type":"refresh","token":...}` on an open connection: a fresh token for the same name moves
    /// its expiry on; the connection keeps its place. A refused one changes nothing (the old expiry
    /// still stands) and the client gets an `error` with code `bad_token`.
    fn on_refresh(
        &mut self,
        io: &mut Io<'_, Self>,
        conn: ConnKey,
        endpoint: Endpoint,
        token: &str,
    ) {
        let m = member(conn);
        let refused = |io: &mut Io<'_, Self>, why: &str| {
            debug!("refresh refused on {}: {why}", conn.index());
            io.metrics().auth_refused += 1;
            let error = serde_json::json!({"type": "error", "code": "bad_token", "message": why});
            io.send_text(conn, error.to_string().as_bytes());
        };
        let Some(verifier) = self.auth.clone() else {
            return;
        };
        let Some(ip) = self.sessions.get(&m).map(|s| s.ip) else {
            return refused(io, "the connection's token has expired");
        };
        if !self.token_checks.try_take(ip, io.wall()) {
            debug!("refresh refused on {}: token check budget", conn.index());
            io.metrics().rate_limited += 1;
            let error = serde_json::json!({"type": "error", "code": "rate_limited", "message": "too many token checks from this address; try again later"});
            io.send_text(conn, error.to_string().as_bytes());
            return;
        }
        let grant = match verifier.verify(token) {
            Ok(g) => g,
            Err(r) => return refused(io, rejected(r)),
        };
        let Some(session) = self.sessions.get_mut(&m) else {
            return refused(io, "the connection's token has expired");
        };
        if grant.name != session.name {
            return refused(io, "the token names someone else");
        }
        if let Endpoint::Room(room) = endpoint {
            if !self.chat.room_id(room).is_some_and(|r| grant.may_join(r)) {
                return refused(io, "the token does not grant this room");
            }
        }
        session.exp = grant.exp;
        arm_token(io, conn, grant.exp);
        let ack = serde_json::json!({"type": "refreshed", "exp": grant.exp});
        io.send_text(conn, ack.to_string().as_bytes());
    }

    fn bridge_send(&self, req: cluster::Request) {
        if let Some(c) = &self.cluster {
            c.send(req);
        }
    }
}

/// Arms the token deadline of `conn` for `exp` (seconds), at most a day ahead.
fn arm_token(io: &mut Io<'_, Server>, conn: ConnKey, exp: u64) {
    let due = exp
        .saturating_mul(1_000_000)
        .min(io.wall() + TOKEN_TIMER_MAX_MICROS);
    io.arm_at(Timer::Token(conn), due);
}

/// The token of a `{"type":"refresh","token":"..."}` message; `None` for anything else.
fn refresh_token(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let obj = v.as_object()?;
    if obj.get("type")?.as_str()? != "refresh" {
        return None;
    }
    Some(obj.get("token")?.as_str()?.to_owned())
}

/// A token refusal's reason, for the debug log and the `bad_token` error.
fn rejected(r: auth::Rejected) -> &'static str {
    match r {
        auth::Rejected::Missing => "no token",
        auth::Rejected::Expired => "token expired",
        auth::Rejected::NotYetValid => "token not yet valid",
        auth::Rejected::BadSignature => "bad signature",
        auth::Rejected::WrongAlgorithm => "wrong algorithm",
        auth::Rejected::WrongIssuerOrAudience => "wrong issuer or audience",
        auth::Rejected::Malformed => "malformed token",
    }
}
