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

mod cluster;

use std::collections::HashMap;
use std::net::IpAddr;

use log::debug;

use crate::chat::{
    self, Chat, ChatConfig, Checked, DemoPost, EventFrame, GlobalPost, Joined, MemberId, Post,
    Presence, Resume, RoomKey, Vocabulary,
};
use crate::config::{Compat, Config};
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
        token: Option<String>,
    },
    /// `/ws/{client_id}`, percent-decoded, not yet cleaned.
    Demo {
        client: String,
    },
}

/// What one of the server's deadlines is for.
#[derive(Debug, Clone, Copy)]
pub enum Timer {
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
    type Opening = Opening;
    type Timer = Timer;

    fn handle_request(
        &mut self,
        io: &mut Io<'_, Self>,
        conn: ConnKey,
        _peer: IpAddr,
        req: &crate::protocol::handshake::Request<'_>,
    ) -> Answer<Opening> {
        let route = http::route_with(req.path(), req.query(), self.routes);
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
            return Answer::Upgrade(match route {
                Route::Echo => Opening::Echo,
                Route::Global => Opening::Global,
                Route::Room {
                    room,
                    client,
                    since,
                    epoch,
                    token,
                } => Opening::Room {
                    room: http::percent_decode(room).into_owned(),
                    client: http::percent_decode(client).into_owned(),
                    since,
                    epoch,
                    token,
                },
                Route::Demo { client } => Opening::Demo {
                    client: http::percent_decode(client).into_owned(),
                },
                _ => unreachable!("bug: not a WebSocket route"),
            });
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
        };
        let bytes = http::answer(&route, req, &view);
        let keep = if req.method == crate::protocol::handshake::Method::Other {
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
        opening: Opening,
    ) -> Endpoint {
        let m = member(conn);
        match opening {
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
                token,
            } => {
                if let Some(c) = self.cluster.as_mut().filter(|c| c.up) {
                    // The cluster de-duplicates the name; `welcome` waits for its answer.
                    c.begin_join(m, peer, &room, &client, since, epoch);
                    return Endpoint::Joining;
                }
                // Two tabs of one person (same name and token) are one entry: local only, the
                // cluster de-duplicates names in Redis, token or not.
                let joined = self.chat.join_with_token(
                    &room,
                    &client,
                    token.as_deref(),
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
                if let Some(c) = self.cluster.as_mut() {
                    c.cancel_join(m);
                }
            }
            Endpoint::Room(room) => {
                self.catching_up.remove(&m);
                // The seed rooms app names who left; Wisp's own `leave` event carries the name.
                let name = (self.chat.vocabulary() == Vocabulary::FastApi)
                    .then(|| self.chat.member_name(room, m).map(str::to_owned))
                    .flatten();
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
            }
        }
    }

    fn handle_timer(&mut self, io: &mut Io<'_, Self>, timer: Timer) {
        match timer {
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

    fn bridge_send(&self, req: cluster::Request) {
        if let Some(c) = &self.cluster {
            c.send(req);
        }
    }
}
