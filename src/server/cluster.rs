//! Cluster mode (`--redis`, SPEC §7) on the server's side: the link to the bridge threads, the room
//! joins waiting for the cluster's answer, and the bridge's notices applied to the chat's replica.
//!
//! The bridge (`crate::cluster`) runs on its own threads; it reaches the loop only through its channel
//! and the reactor's waker (so [`Service::handle_wake`](crate::reactor::Service::handle_wake) drains
//! it), and the server reaches it only through its channel, so no turn ever waits on Redis. Room posts
//! and joins go to the bridge; what comes back on its feed is applied to the chat's replica and
//! delivered like any broadcast (see `chat::replica`). While Redis is unreachable the node serves its
//! own clients exactly as a single daemon does.
//!
//! The node follows a room while it has members there (joined or joining): the first join asks the
//! bridge to follow it and answers with the room's image; events of the room that arrive before that
//! answer wait for it, so they are applied on top of the image, in order. The last member's departure
//! unfollows the room, and the replica forgets it.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use log::{info, warn};
use mio::Waker;

use crate::chat::{self, ClusterImage, MemberId, Origin, Presence, Resume, RoomImage};
use crate::cluster::{self, Bridge, Notice};
use crate::config::Config;
use crate::http::{self, Route};
use crate::protocol::handshake::{Method, Request as HttpRequest};
use crate::reactor::{Answer, ConnKey, Io};

pub(super) use crate::cluster::Request;

use super::{conn_of, member, Admitted, Endpoint, Server, Timer};

/// Most text frames kept for a client whose cluster join is not answered yet; more are refused as
/// over the rate limit. The answer normally takes well under a millisecond.
const MAX_QUEUED_WHILE_JOINING: usize = 64;

/// How long the bridge gets at exit to take this node's members out of the cluster.
const BRIDGE_SHUTDOWN: Duration = Duration::from_secs(1);

/// Cluster mode: the bridge and what the server knows of the links.
pub(super) struct ClusterLink {
    bridge: Bridge,
    /// The bridge's command link is up.
    commands_up: bool,
    /// A feed has sent its image (and, on a single server, not been lost since).
    feed: bool,
    /// Rooms this node follows: with a member here, joined or joining.
    followed: HashSet<String>,
    /// Rooms whose first join is with the bridge: their events wait for its image.
    pending: HashMap<String, Vec<Notice>>,
    /// Serving as part of the cluster: both links up and an image applied since. Otherwise the node
    /// serves locally, as a single daemon.
    pub(super) up: bool,
    /// The one `warn` of an outage was written (cleared when the node is back in the cluster).
    down_logged: bool,
    /// Room joins waiting for the bridge's answer.
    joining: HashMap<MemberId, Joining>,
    /// HTTP views of rooms this node does not follow, waiting for their image (by request token).
    views: HashMap<u64, LateView>,
}

/// `GET /rooms/{room}/messages` for a room this node does not follow: what its answer needs once
/// the room's image comes from Redis.
pub(super) struct LateView {
    conn: ConnKey,
    room: String,
    since: Option<u64>,
    limit: Option<usize>,
    head_only: bool,
    origin: Option<String>,
}

/// A room join waiting for the cluster: what `welcome` needs, and the frames sent meanwhile.
///
/// In the cluster, `welcome` is sent when the member's own `join` comes back on the feed, not when the
/// bridge answers: the feed is ordered, so by then the replica holds everything published before the
/// join (members, messages) and `welcome` misses nothing that no later event brings.
pub(super) struct Joining {
    /// The member's address, for the chat's per-address rate limit.
    peer: IpAddr,
    room: String,
    wanted: String,
    since: Option<u64>,
    epoch: Option<String>,
    queued: Vec<Box<str>>,
    /// The bridge's answer (name, epoch), kept in case the feed drops before the `join` comes back.
    answer: Option<(String, String)>,
}

impl ClusterLink {
    /// Starts the bridge threads; they wake the loop through `waker`.
    pub(super) fn start(cfg: &Config, url: &str, waker: Waker) -> std::io::Result<ClusterLink> {
        let seeds: Vec<String> = url.split(',').map(|s| s.trim().to_owned()).collect();
        let bridge = cluster::start(
            cluster::Settings {
                seeds,
                ttl: cfg.history_ttl,
                history_max: cfg.history_max,
                batch: cfg.redis_batch,
            },
            waker,
        )?;
        if cfg.redis_cluster {
            info!("cluster: joining through the Redis Cluster at {url}");
        } else {
            info!("cluster: joining through Redis at {url}");
        }
        Ok(ClusterLink {
            bridge,
            commands_up: false,
            feed: false,
            followed: HashSet::new(),
            pending: HashMap::new(),
            views: HashMap::new(),
            up: false,
            down_logged: false,
            joining: HashMap::new(),
        })
    }

    pub(super) fn send(&self, req: Request) {
        self.bridge.send(req);
    }

    pub(super) fn drain(&self) -> Vec<Notice> {
        self.bridge.drain()
    }

    pub(super) fn shutdown(self) {
        self.bridge.shutdown(BRIDGE_SHUTDOWN);
    }

    /// Asks the cluster for a name in `room` (both percent-decoded); `welcome` waits for the answer.
    pub(super) fn begin_join(
        &mut self,
        m: MemberId,
        peer: IpAddr,
        room: &str,
        client: &str,
        since: Option<u64>,
        epoch: Option<String>,
    ) {
        let room = chat::clean_room(room);
        let wanted = chat::clean_client(client);
        let follow = self.followed.insert(room.clone());
        if follow {
            self.pending.insert(room.clone(), Vec::new());
        }
        self.bridge.send(Request::Join {
            conn: m.0,
            room: room.clone(),
            wanted: wanted.clone(),
            follow,
        });
        self.joining.insert(
            m,
            Joining {
                peer,
                room,
                wanted,
                since,
                epoch,
                queued: Vec::new(),
                answer: None,
            },
        );
    }

    /// A joining member went away; returns its room.
    pub(super) fn cancel_join(&mut self, m: MemberId) -> Option<String> {
        self.bridge.send(Request::Leave { conn: m.0 });
        self.joining.remove(&m).map(|j| j.room)
    }

    /// A member joined `room` (cleaned) locally while Redis is away: follow the room, so that the
    /// feeds subscribe to it and bring its image when they are back.
    pub(super) fn follow_local(&mut self, room: &str) {
        if self.followed.insert(room.to_owned()) {
            self.bridge.send(Request::Follow {
                room: room.to_owned(),
            });
        }
    }

    /// Whether a member is joining `room`.
    fn joining_room(&self, room: &str) -> bool {
        self.joining.values().any(|j| j.room == room)
    }

    /// Where an event of `room` goes: `Some(notice)` to apply now, `None` when it waits for the
    /// room's image or concerns a room this node does not follow.
    fn route(&mut self, room: &str, notice: Notice) -> Option<Notice> {
        if let Some(waiting) = self.pending.get_mut(room) {
            waiting.push(notice);
            return None;
        }
        self.followed.contains(room).then_some(notice)
    }

    pub(super) fn send_leave(&self, m: MemberId) {
        self.bridge.send(Request::Leave { conn: m.0 });
    }

    /// Keeps a text sent before `welcome`; false when too many are waiting.
    pub(super) fn queue_while_joining(&mut self, m: MemberId, text: &str) -> bool {
        match self.joining.get_mut(&m) {
            Some(j) if j.queued.len() < MAX_QUEUED_WHILE_JOINING => {
                j.queued.push(text.into());
                true
            }
            Some(_) => false,
            None => true,
        }
    }
}

impl Server {
    pub(super) fn on_notice(&mut self, io: &mut Io<'_, Self>, notice: Notice) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let up = c.up;
        // A followed room's events wait while its image is on its way; other rooms' are dropped.
        let notice = match notice {
            Notice::Messages { ref room, .. } | Notice::Presence { ref room, .. } if up => {
                let room = room.clone();
                match c.route(&room, notice) {
                    Some(n) => n,
                    None => return,
                }
            }
            other => other,
        };
        match notice {
            Notice::Commands { up: true } => {
                c.commands_up = true;
                if !c.up && c.feed {
                    // The feeds' images came while commands were down and were not used: get
                    // fresh ones.
                    c.bridge.send(Request::Resync);
                }
            }
            Notice::Commands { up: false } => {
                c.commands_up = false;
                self.leave_cluster(io);
            }
            Notice::FeedDown => {
                c.feed = false;
                self.leave_cluster(io);
            }
            Notice::FeedUp { image } => {
                c.feed = true;
                if !c.commands_up {
                    // Not used: a fresh one is asked for when commands are back.
                } else if c.up {
                    // One shard's feed is back: its rooms start over from their image.
                    self.apply_image(io, &image);
                } else {
                    self.enter_cluster(io, &image);
                }
            }
            Notice::Messages { room, epoch, msgs } if up => {
                for msg in &msgs {
                    if let Some((key, event, arm)) = self.chat.cluster_message(&room, &epoch, msg) {
                        self.broadcast_room_message(io, key, &event);
                        if let Some(due) = arm {
                            io.arm_at(Timer::Room(key), due);
                        }
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
                    self.finish_join(io, MemberId(conn), Some((name.clone(), epoch.clone())));
                }
                if let Some(d) = self
                    .chat
                    .cluster_presence(&room, &epoch, kind, &name, at, origin)
                {
                    self.deliver(io, &d);
                }
            }
            Notice::Global { seq, at, text } if up => {
                if let Some((frame, arm)) = self.chat.cluster_global(seq, at, &text) {
                    self.broadcast_global(io, &frame);
                    if let Some(due) = arm {
                        io.arm_at(Timer::Global, due);
                    }
                }
            }
            Notice::Messages { .. } | Notice::Presence { .. } | Notice::Global { .. } => {
                // Not in the cluster now: the next image brings the replica up to date.
            }
            Notice::Joined {
                conn,
                name,
                epoch,
                image,
            } => {
                let room = c.joining.get(&MemberId(conn)).map(|j| j.room.clone());
                if let Some(image) = image {
                    self.room_image(io, image);
                }
                let Some(c) = self.cluster.as_mut() else {
                    return;
                };
                match c.joining.get_mut(&MemberId(conn)) {
                    // `welcome` waits for the `join` on the feed.
                    Some(j) if c.up => j.answer = Some((name, epoch)),
                    Some(_) => self.finish_join(io, MemberId(conn), Some((name, epoch))),
                    None => {}
                }
                if let Some(room) = room {
                    self.release_events(io, &room);
                }
            }
            Notice::JoinFailed { conn } => {
                let room = c.joining.get(&MemberId(conn)).map(|j| j.room.clone());
                if let Some(room) = room {
                    // No image is coming: what waited is covered by the next one.
                    c.pending.remove(&room);
                }
                self.finish_join(io, MemberId(conn), None);
            }
            Notice::PublishFailed {
                room,
                name,
                content,
            } => {
                self.publish_locally(io, &room, &name, &content);
            }
            Notice::PostFailed { conn, content } => {
                let key = conn_of(MemberId(conn));
                let Some(Endpoint::Room(room)) = io.endpoint(key) else {
                    return;
                };
                let post = self
                    .chat
                    .post_content(room, MemberId(conn), &content, io.wall());
                self.apply_post(io, key, room, post);
            }
            Notice::GlobalFailed { text } => {
                let (frame, arm) = self.chat.global_store(&text, io.wall());
                self.broadcast_global(io, &frame);
                if let Some(due) = arm {
                    io.arm_at(Timer::Global, due);
                }
            }
            Notice::Epoch { room, epoch } => {
                if up {
                    self.chat.cluster_epoch(&room, &epoch);
                }
            }
            Notice::View { req, image } => {
                let Some(v) = c.views.remove(&req) else {
                    return;
                };
                let now = io.wall();
                let body = match image {
                    Some(image) => self.chat.image_messages_json(&image, v.since, v.limit, now),
                    // Redis could not be asked: what this node has (nothing, as it does not follow
                    // the room), as a single daemon would answer.
                    None => self.chat.room_messages_json(&v.room, v.since, v.limit, now),
                };
                let bytes = http::late_json(
                    &body,
                    &self.allowed_origins,
                    v.origin.as_deref(),
                    v.head_only,
                );
                io.respond(v.conn, &bytes);
            }
        }
    }

    /// `GET /rooms/{room}/messages` for a room this node does not follow, in the cluster: its
    /// history is read from Redis and the answer given when it comes ([`Answer::Later`]).
    pub(super) fn view_from_redis(
        &mut self,
        conn: ConnKey,
        req: &HttpRequest<'_>,
        route: &Route<'_>,
    ) -> Option<Answer<Admitted>> {
        let Route::RoomMessages { room, since, limit } = route else {
            return None;
        };
        if !matches!(req.method, Method::Get | Method::Head) {
            return None;
        }
        let c = self.cluster.as_mut().filter(|c| c.up)?;
        let room = chat::clean_room(&http::percent_decode(room));
        if c.followed.contains(&room) {
            return None;
        }
        let token = member(conn).0;
        c.bridge.send(Request::View {
            req: token,
            room: room.clone(),
        });
        c.views.insert(
            token,
            LateView {
                conn,
                room,
                since: *since,
                limit: *limit,
                head_only: req.method == Method::Head,
                origin: req.origin.map(str::to_owned),
            },
        );
        Some(Answer::Later)
    }

    /// The image of a room this node starts following, read with its first join here.
    fn room_image(&mut self, io: &mut Io<'_, Self>, image: RoomImage) {
        if !self.cluster.as_ref().is_some_and(|c| c.up) {
            return; // serving locally: the next feed image brings it
        }
        let image = ClusterImage {
            rooms: vec![image],
            global: None,
        };
        self.apply_image(io, &image);
    }

    /// The room's image is applied (or will not come): the events that waited for it, in order.
    fn release_events(&mut self, io: &mut Io<'_, Self>, room: &str) {
        let Some(waiting) = self.cluster.as_mut().and_then(|c| c.pending.remove(room)) else {
            return;
        };
        for notice in waiting {
            self.on_notice(io, notice);
        }
    }

    /// Applies `image` to the replica: what changed is told, expiry timers armed.
    fn apply_image(&mut self, io: &mut Io<'_, Self>, image: &ClusterImage) {
        let applied = self.chat.apply_image(image, io.wall());
        for (room, event) in &applied.missed {
            self.broadcast_room_message(io, *room, event);
        }
        for d in &applied.deliveries {
            self.deliver(io, d);
        }
        for (room, due) in applied.arm_rooms {
            io.arm_at(Timer::Room(room), due);
        }
        if let Some(due) = applied.arm_global {
            io.arm_at(Timer::Global, due);
        }
    }

    /// A member of `room` (cleaned name) is gone: the last one here unfollows the room.
    pub(super) fn maybe_unfollow(&mut self, room: &str) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let still = self
            .chat
            .room_key(room)
            .is_some_and(|key| !self.chat.room_members(key).is_empty());
        if still || c.joining_room(room) || !c.followed.remove(room) {
            return;
        }
        c.pending.remove(room);
        c.bridge.send(Request::Unfollow {
            room: room.to_owned(),
        });
        self.chat.cluster_forget(room);
    }

    /// Both links are up and `image` is fresh: become a replica of the cluster.
    fn enter_cluster(&mut self, io: &mut Io<'_, Self>, image: &ClusterImage) {
        self.apply_image(io, image);
        // Our members: those that joined while Redis was away, or that a restarted Redis lost.
        let mut members = Vec::new();
        let mut pending = Vec::new();
        for (conn, endpoint) in io.open_connections() {
            let m = member(conn);
            match endpoint {
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
    fn leave_cluster(&mut self, io: &mut Io<'_, Self>) {
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
            self.finish_join(io, m, Some(answer));
        }
    }

    /// A room join is settled: send `welcome` (in the cluster with the cluster's name and epoch, or a
    /// local join when the node is serving locally), then apply the frames the client sent meanwhile.
    fn finish_join(
        &mut self,
        io: &mut Io<'_, Self>,
        m: MemberId,
        answer: Option<(String, String)>,
    ) {
        let Some(j) = self.cluster.as_mut().and_then(|c| c.joining.remove(&m)) else {
            return; // the connection ended first; its Leave went to the bridge after the Join
        };
        let key = conn_of(m);
        if !matches!(io.endpoint(key), Some(Endpoint::Joining)) {
            return;
        }
        let resume = Resume {
            since: j.since,
            epoch: j.epoch.as_deref(),
        };
        let up = self.cluster.as_ref().is_some_and(|c| c.up);
        let room = match answer {
            Some((name, epoch)) if up => {
                let joined =
                    self.chat
                        .cluster_join(&j.room, &name, &epoch, m, j.peer, resume, io.wall());
                self.greet(io, key, &joined, j.since);
                joined.key
            }
            // Serving locally: a local join (local epoch), under the cluster's name if it gave one.
            answer => {
                let name = answer.map_or(j.wanted, |(name, _)| name);
                let joined = self.chat.join(&j.room, &name, m, j.peer, resume, io.wall());
                self.greet(io, key, &joined, j.since);
                self.announce(
                    io,
                    joined.key,
                    Presence::Join,
                    &joined.name,
                    &joined.join_event,
                    m,
                );
                joined.key
            }
        };
        io.set_endpoint(key, Endpoint::Room(room));
        for text in j.queued {
            self.on_text(io, key, Endpoint::Room(room), &text);
        }
    }
}
