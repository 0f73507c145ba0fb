//! Cluster mode (`--redis`, SPEC §7) on the server's side: the link to the bridge threads, the room
//! joins waiting for the cluster's answer, and the bridge's notices applied to the chat's replica.
//!
//! The bridge (`crate::cluster`) runs on its own threads; it reaches the loop only through its channel
//! and the reactor's waker (so [`Service::handle_wake`](crate::reactor::Service::handle_wake) drains
//! it), and the server reaches it only through its channel, so no turn ever waits on Redis. Room posts
//! and joins go to the bridge; what comes back on its feed is applied to the chat's replica and
//! delivered like any broadcast (see `chat::replica`). While Redis is unreachable the node serves its
//! own clients exactly as a single daemon does.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use log::{info, warn};
use mio::Waker;

use crate::chat::{self, ClusterImage, MemberId, Origin, Presence, Resume};
use crate::cluster::{self, Bridge, Notice};
use crate::config::Config;
use crate::reactor::Io;

pub(super) use crate::cluster::Request;

use super::{conn_of, member, Endpoint, Server, Timer};

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
    /// While the feed is subscribed: the generation of its last image (applied or not).
    feed: Option<u64>,
    /// Serving as part of the cluster: both links up and an image applied since. Otherwise the node
    /// serves locally, as a single daemon.
    pub(super) up: bool,
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
        let bridge = cluster::start(
            cluster::Settings {
                url: url.to_owned(),
                ttl: cfg.history_ttl,
                history_max: cfg.history_max,
            },
            waker,
        )?;
        info!("cluster: joining through Redis at {url}");
        Ok(ClusterLink {
            bridge,
            commands_up: false,
            feed: None,
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
        self.bridge.send(Request::Join {
            conn: m.0,
            room: room.clone(),
            wanted: wanted.clone(),
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

    /// A joining member went away.
    pub(super) fn cancel_join(&mut self, m: MemberId) {
        self.joining.remove(&m);
        self.bridge.send(Request::Leave { conn: m.0 });
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
                self.leave_cluster(io);
            }
            Notice::FeedDown => {
                c.feed = None;
                self.leave_cluster(io);
            }
            Notice::FeedUp { gen, image } => {
                c.feed = Some(gen);
                if c.commands_up {
                    self.enter_cluster(io, &image);
                }
            }
            Notice::Message { room, epoch, msg } if up => {
                if let Some((key, event, arm)) = self.chat.cluster_message(&room, &epoch, &msg) {
                    self.broadcast_room_message(io, key, &event);
                    if let Some(due) = arm {
                        io.arm_at(Timer::Room(key), due);
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
            Notice::Message { .. } | Notice::Presence { .. } | Notice::Global { .. } => {
                // Not in the cluster now: the next image brings the replica up to date.
            }
            Notice::Joined { conn, name, epoch } => {
                match c.joining.get_mut(&MemberId(conn)) {
                    // `welcome` waits for the `join` on the feed.
                    Some(j) if up => j.answer = Some((name, epoch)),
                    Some(_) => self.finish_join(io, MemberId(conn), Some((name, epoch))),
                    None => {}
                }
            }
            Notice::JoinFailed { conn } => self.finish_join(io, MemberId(conn), None),
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
        }
    }

    /// Both links are up and `image` is fresh: become a replica of the cluster.
    fn enter_cluster(&mut self, io: &mut Io<'_, Self>, image: &ClusterImage) {
        let applied = self.chat.apply_image(image, io.wall());
        for d in &applied.deliveries {
            self.deliver(io, d);
        }
        for (room, due) in applied.arm_rooms {
            io.arm_at(Timer::Room(room), due);
        }
        if let Some(due) = applied.arm_global {
            io.arm_at(Timer::Global, due);
        }
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
