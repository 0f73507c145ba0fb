//! The command thread (`wisp-redis`): every write to Redis, shard by shard.
//!
//! Requests from the reactor are routed to the shard that owns their room's slot (one shard for a
//! single Redis server) and queued there, in order: a room's joins, posts and leaves reach its shard
//! in the order the reactor sent them. Each turn, every reachable shard gets its whole queue in one
//! pipeline, consecutive posts packed into as few `post.lua` calls as Redis allows (one per slot in
//! a cluster, one for the whole run on a single server), so a busy node pays one round trip and a
//! few script calls per turn, not one per message.
//!
//! A shard that cannot be reached keeps its queue while a failover may still fix it
//! ([`FAILOVER_GRACE`] in a cluster; at once on a single server, where nothing else can take
//! over): what is still queued after that goes back to the reactor as failed (delivered locally).
//! A `MOVED` reply re-reads the topology and routes the operation again; `ASK` and `TRYAGAIN`
//! (a slot being migrated) retry it a moment later. After a shard failed over, the rooms this node
//! follows there are rebased (`rebase`) before anything else is sent to it, so that ids the lost
//! master gave out are never given out again.
//!
//! Every second the thread notes this node alive in the node registry and learns which nodes are
//! dead; a node that newly died has its members swept from every room this node follows (other
//! rooms are swept by the next join there). It also owns the feed threads (`feed`), one per shard,
//! restarted whenever the topology changes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use redis::{Connection, RedisError, Value};

use super::feed::Feed;
use super::keys::{self, RoomKeys, GLOBAL_CHANNEL, GLOBAL_KEYS, NODES};
use super::parse::{parse_room_image, strings, text};
use super::scripts::{eval, is_noscript, load_all, Scripts};
use super::seed::Seed;
use super::slots::{self, Redirect, Topology};
use super::{Notice, Request, Settings, Shared, ToReactor};
use super::{BACKOFF_MAX, BACKOFF_MIN, CONNECT_TIMEOUT};

/// How often the command thread notes this node alive and looks for dead nodes.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node that has not noted itself alive for this long is dead: its members are swept. A node
/// that dies leaves ghosts in presence for at most `NODE_TTL + HEARTBEAT` (6 s).
const NODE_TTL: Duration = Duration::from_secs(5);
/// A dead node stays in the registry this long, so that a room nobody followed when it died is
/// swept by its next join.
const NODE_FORGET: Duration = Duration::from_secs(24 * 3600);
/// How long operations for an unreachable shard of a Redis Cluster wait for its failover before
/// they fail (Redis Cluster replaces a master within about two `cluster-node-timeout`s).
const FAILOVER_GRACE: Duration = Duration::from_secs(8);
/// How soon an operation refused with `ASK` or `TRYAGAIN` (a slot in migration) is tried again.
const MIGRATION_RETRY: Duration = Duration::from_millis(20);
/// Most operations waiting for one shard: beyond, new ones fail back to the reactor (served
/// locally), so a shard that is away or slow costs a bounded amount of memory (a post is its text
/// and a few dozen bytes).
const MAX_QUEUED: usize = 65_536;
/// Most posts packed into one `post.lua` call (its ARGV stays well within Lua's limits).
const POSTS_PER_CALL: usize = 256;

/// Whether `e` means the connection is unusable (as opposed to a script refusing its input).
fn is_link_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || matches!(
            e.code(),
            Some("LOADING" | "BUSY" | "MASTERDOWN" | "READONLY" | "CLUSTERDOWN")
        )
}

/// One operation queued for a shard.
#[derive(Debug)]
enum Op {
    Join {
        conn: u64,
        room: String,
        wanted: String,
        follow: bool,
    },
    Leave {
        room: String,
        field: String,
    },
    /// A member's message (`conn: Some`) or a server API message (`conn: None`).
    Post {
        conn: Option<u64>,
        room: String,
        name: String,
        content: String,
    },
    Global {
        text: String,
    },
    /// Re-registration of this node's members of `room` after an outage.
    Sync {
        room: String,
        members: Vec<(u64, String)>,
    },
    Sweep {
        room: String,
    },
    /// After a failover: the room's ids continue after `last`, the last one this node saw.
    Rebase {
        room: String,
        last: u64,
    },
    /// An HTTP view of a room this node does not follow (read only).
    View {
        req: u64,
        room: String,
    },
}

impl Op {
    /// The key that routes the operation (its slot's shard).
    fn route_key(&self) -> String {
        match self {
            Op::Join { room, .. }
            | Op::Leave { room, .. }
            | Op::Post { room, .. }
            | Op::Sync { room, .. }
            | Op::Sweep { room }
            | Op::Rebase { room, .. }
            | Op::View { room, .. } => keys::room_tag(room),
            Op::Global { .. } => GLOBAL_KEYS[0].to_owned(),
        }
    }
}

struct Queued {
    op: Op,
    since: Instant,
}

/// One master and what waits for it.
struct Shard {
    addr: String,
    con: Option<Connection>,
    queue: VecDeque<Queued>,
    next_try: Instant,
    backoff: Duration,
    /// The connection failed since it was last up: rebase before sending anything.
    failed: bool,
    /// Nothing is sent before this (after `ASK`/`TRYAGAIN`).
    hold_until: Instant,
    /// The one `warn` of a full queue was written (cleared once it drains).
    full_logged: bool,
}

impl Shard {
    /// Whether it has something to send and may send it now.
    fn ready(&self, now: Instant) -> bool {
        self.con.is_some() && !self.queue.is_empty() && now >= self.hold_until
    }

    fn new(addr: String) -> Shard {
        Shard {
            addr,
            con: None,
            queue: VecDeque::new(),
            next_try: Instant::now(),
            backoff: BACKOFF_MIN,
            failed: false,
            hold_until: Instant::now(),
            full_logged: false,
        }
    }
}

/// A room's posts in one `post.lua` call.
type RoomPosts = (String, Vec<Queued>);

/// What a pipeline entry stands for: the operations a reply answers.
enum Sent {
    One(Queued),
    /// One `post.lua` call: the posts it carries.
    Posts(Vec<Queued>),
}

/// A pipeline written to a shard whose replies are still to be read.
struct InFlight {
    shard: usize,
    sent: Vec<Sent>,
}

impl InFlight {
    /// Whether it carries only messages (which nobody waits for: their events come back through
    /// the feeds), so that reading its replies may wait for more posts to gather.
    fn only_posts(&self) -> bool {
        self.sent.iter().all(|s| match s {
            Sent::Posts(_) => true,
            Sent::One(q) => matches!(q.op, Op::Global { .. }),
        })
    }
}

pub(super) struct Commands {
    settings: Settings,
    node: String,
    shared: Arc<Shared>,
    out: ToReactor,
    /// `None` until the cluster (or server) has been reached.
    topology: Option<Arc<Topology>>,
    shards: Vec<Shard>,
    /// The topology must be read again (a `MOVED`, a lost shard).
    stale: bool,
    next_discovery: Instant,
    discovery_backoff: Duration,
    /// Whether the reactor was last told the link is up.
    told_up: bool,
    /// Our room members the cluster knows: conn → (room, name).
    members: HashMap<u64, (String, String)>,
    /// Rooms where this node has registered members (for `Sync`), until it unfollows them.
    known_rooms: HashSet<String>,
    /// Nodes the registry says are dead.
    dead: Vec<String>,
    seed: Seed,
    next_beat: Instant,
}

impl Commands {
    pub(super) fn new(
        settings: Settings,
        node: String,
        shared: Arc<Shared>,
        out: ToReactor,
        seed: Seed,
    ) -> Commands {
        Commands {
            settings,
            node,
            shared,
            out,
            topology: None,
            shards: Vec::new(),
            stale: true,
            next_discovery: Instant::now(),
            discovery_backoff: BACKOFF_MIN,
            told_up: false,
            members: HashMap::new(),
            known_rooms: HashSet::new(),
            dead: Vec::new(),
            seed,
            next_beat: Instant::now(),
        }
    }

    pub(super) fn run(mut self, rx: Receiver<Request>) {
        loop {
            if self.stale && Instant::now() >= self.next_discovery {
                self.discover();
            }
            self.connect_shards();
            if self.topology.is_some() && Instant::now() >= self.next_beat {
                self.heartbeat();
                self.next_beat = Instant::now() + HEARTBEAT;
            }
            // Every shard's queue goes out as one pipeline. When they carry only posts, the thread
            // sleeps `--redis-batch-us` before it reads the replies, and the posts that arrive
            // meanwhile go out together in the next turn: under load, one round trip and one
            // script call per shard carry many posts, and the thread is never parked, so the
            // reactor's sends wake nobody. The first post after a quiet spell goes out at once.
            let flights = self.send_all();
            if !self.settings.batch.is_zero()
                && !flights.is_empty()
                && flights.iter().all(InFlight::only_posts)
            {
                thread::sleep(self.settings.batch);
            }
            for f in flights {
                self.receive(f);
            }
            self.fail_expired();
            self.tell_link();
            // (After fail_expired: on a single server, whatever waits at all has failed.)
            if self.drain_into(&rx).is_err() {
                return;
            }
            if self.any_ready() {
                continue;
            }
            let wait = self
                .next_wake()
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            match rx.recv_timeout(wait) {
                Ok(req) => {
                    // Everything already waiting joins this turn's pipelines.
                    if !self.take(req) || self.drain_into(&rx).is_err() {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Takes every request waiting; `Err` when the thread must end.
    fn drain_into(&mut self, rx: &Receiver<Request>) -> Result<(), ()> {
        loop {
            match rx.try_recv() {
                Ok(req) => {
                    if !self.take(req) {
                        return Err(());
                    }
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return Err(()),
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(()),
            }
        }
    }

    /// Whether a shard has something to send and may send it now.
    fn any_ready(&self) -> bool {
        let now = Instant::now();
        self.shards.iter().any(|s| s.ready(now))
    }

    /// When the loop must look again without a request.
    fn next_wake(&self) -> Instant {
        let mut at = self.next_beat;
        if self.stale {
            at = at.min(self.next_discovery);
        }
        for s in &self.shards {
            if s.con.is_none() {
                at = at.min(s.next_try);
            }
            if let Some(q) = s.queue.front() {
                at = at.min(s.hold_until.max(q.since + self.grace()));
            }
        }
        at
    }

    fn is_cluster(&self) -> bool {
        self.topology.as_ref().is_some_and(|t| t.is_cluster())
    }

    fn grace(&self) -> Duration {
        if self.is_cluster() {
            FAILOVER_GRACE
        } else {
            Duration::ZERO
        }
    }

    // ---- requests -------------------------------------------------------------------------------

    /// Takes one request; false when the thread must end.
    fn take(&mut self, req: Request) -> bool {
        match req {
            Request::Join {
                conn,
                room,
                wanted,
                follow,
            } => {
                self.known_rooms.insert(room.clone());
                if follow {
                    self.follow(&room);
                }
                self.queue(Op::Join {
                    conn,
                    room,
                    wanted,
                    follow,
                });
            }
            Request::Unfollow { room } => {
                // Its members' leaves are queued already.
                self.known_rooms.remove(&room);
                self.unfollow(&room);
            }
            Request::Follow { room } => {
                self.known_rooms.insert(room.clone());
                self.follow(&room);
            }
            Request::Leave { conn } => {
                if let Some((room, _)) = self.members.remove(&conn) {
                    let field = keys::member_field(&self.node, conn);
                    self.queue(Op::Leave { room, field });
                }
            }
            Request::Post { conn, content } => match self.members.get(&conn) {
                Some((room, name)) => {
                    let (room, name) = (room.clone(), name.clone());
                    self.queue(Op::Post {
                        conn: Some(conn),
                        room,
                        name,
                        content,
                    });
                }
                // Not registered (joined while Redis was away, before the Sync).
                None => self.out.send(Notice::PostFailed { conn, content }),
            },
            Request::Publish {
                room,
                name,
                content,
            } => self.queue(Op::Post {
                conn: None,
                room,
                name,
                content,
            }),
            Request::GlobalPost { text } => self.queue(Op::Global { text }),
            Request::View { req, room } => self.queue(Op::View { req, room }),
            Request::Sync { members, pending } => self.sync(members, pending),
            Request::Resync => self.restart_feeds(),
            Request::Rediscover => {
                self.stale = true;
                self.next_discovery = self.next_discovery.min(Instant::now());
            }
            Request::Check => {
                for i in 0..self.shards.len() {
                    let ping = self.shards[i]
                        .con
                        .as_mut()
                        .map(|con| redis::cmd("PING").query::<Value>(con));
                    if let Some(Err(e)) = ping {
                        self.lost(i, &e);
                    }
                }
                self.tell_link();
                self.shared.checks.fetch_add(1, Ordering::AcqRel);
            }
            Request::Shutdown => {
                self.bye();
                return false;
            }
        }
        true
    }

    /// Queues `op` on its shard; fails it at once when no shard can be named, or when the shard
    /// already has [`MAX_QUEUED`] operations waiting (a shard that cannot keep up, or is away).
    fn queue(&mut self, op: Op) {
        // One server serves every slot: no key to build per operation.
        let shard = match &self.topology {
            Some(t) if !t.is_cluster() => Some(0),
            _ => self.shard_of(&op.route_key()),
        };
        let Some(i) = shard else {
            self.fail(op);
            return;
        };
        if self.shards[i].queue.len() >= MAX_QUEUED {
            if !self.shards[i].full_logged {
                self.shards[i].full_logged = true;
                warn!(
                    "cluster: {MAX_QUEUED} operations wait for {}; more are served locally",
                    self.shards[i].addr
                );
            }
            self.fail(op);
            return;
        }
        self.shards[i].queue.push_back(Queued {
            op,
            since: Instant::now(),
        });
    }

    fn shard_of(&self, key: &str) -> Option<usize> {
        self.topology.as_ref()?.shard_of_key(key.as_bytes())
    }

    /// Redis is back (the reactor applied a fresh image): re-register every member of ours, room by
    /// room, and forget any other member of ours in the rooms we had members in. Members whose join
    /// is in flight (`pending`) stay as the bridge knows them.
    fn sync(&mut self, members: Vec<(u64, String, String)>, pending: Vec<u64>) {
        let kept: Vec<(u64, (String, String))> = pending
            .iter()
            .filter_map(|conn| Some((*conn, self.members.get(conn)?.clone())))
            .collect();
        self.members = members
            .into_iter()
            .map(|(conn, room, name)| (conn, (room, name)))
            .chain(kept)
            .collect();
        let mut by_room: HashMap<String, Vec<(u64, String)>> = self
            .known_rooms
            .drain()
            .map(|room| (room, Vec::new()))
            .collect();
        for (conn, (room, name)) in &self.members {
            by_room
                .entry(room.clone())
                .or_default()
                .push((*conn, name.clone()));
        }
        for (room, members) in by_room {
            if !members.is_empty() {
                self.known_rooms.insert(room.clone());
            }
            self.queue(Op::Sync { room, members });
        }
    }

    // ---- subscriptions ----------------------------------------------------------------------------

    /// Starts following `room`: its channel is subscribed on its shard's feed before the join that
    /// reads its image is sent (waiting up to a second for Redis to confirm).
    fn follow(&mut self, room: &str) {
        let channel = keys::channel_of(room);
        let shard = self.shard_of(&channel);
        self.shared.subscribe(room, &channel, shard);
    }

    fn unfollow(&mut self, room: &str) {
        let channel = keys::channel_of(room);
        let shard = self.shard_of(&channel);
        self.shared.unsubscribe(room, &channel, shard);
    }

    /// Stops the feed threads and starts one per master of the current topology.
    fn restart_feeds(&mut self) {
        let Some(topology) = self.topology.clone() else {
            return;
        };
        let gen = self.shared.stop_feeds();
        for shard in 0..topology.masters().len() {
            let feed = Feed {
                topology: Arc::clone(&topology),
                shard,
                gen,
                ttl_us: self.settings.ttl.as_micros() as u64,
                node: self.node.clone(),
                shared: Arc::clone(&self.shared),
                out: self.out.clone(),
                req: self.shared.requests(),
            };
            let spawned = thread::Builder::new()
                .name(format!("wisp-redis-feed-{shard}"))
                .spawn(move || feed.run());
            if let Err(e) = spawned {
                error!("cluster: cannot start a feed thread: {e}");
            }
        }
    }

    // ---- links ------------------------------------------------------------------------------------

    /// Reads the topology from the seeds; a changed set of masters rebuilds the shards (moving
    /// their queues) and restarts the feeds.
    fn discover(&mut self) {
        match Topology::discover(&self.settings.seeds, CONNECT_TIMEOUT) {
            Ok(topology) => {
                self.stale = false;
                self.discovery_backoff = BACKOFF_MIN;
                let same = self
                    .topology
                    .as_ref()
                    .is_some_and(|t| t.masters() == topology.masters() && **t == topology);
                if same {
                    return;
                }
                let replicas: usize = (0..topology.masters().len())
                    .map(|i| topology.replicas(i).len())
                    .sum();
                if self.topology.is_none() && topology.is_cluster() {
                    info!(
                        "cluster: Redis Cluster of {} masters and {replicas} replicas",
                        topology.masters().len()
                    );
                } else if self.topology.is_some() {
                    info!(
                        "cluster: Redis Cluster topology changed: masters {:?}",
                        topology.masters()
                    );
                }
                if !topology.covers_all() {
                    warn!("cluster: some slots of the Redis Cluster have no master");
                }
                let topology = Arc::new(topology);
                let mut old: HashMap<String, Shard> =
                    self.shards.drain(..).map(|s| (s.addr.clone(), s)).collect();
                let mut queued: Vec<Queued> = Vec::new();
                for s in old.values_mut() {
                    queued.extend(s.queue.drain(..));
                }
                let changed = self.topology.is_some();
                self.shards = topology
                    .masters()
                    .iter()
                    .map(|addr| {
                        old.remove(addr).unwrap_or_else(|| {
                            let mut shard = Shard::new(addr.clone());
                            // A master that took over slots (a promoted replica) may lack the
                            // last writes: rebase the rooms followed there before using it.
                            shard.failed = changed;
                            shard
                        })
                    })
                    .collect();
                self.topology = Some(topology);
                queued.sort_by_key(|q| q.since);
                for q in queued {
                    match self.shard_of(&q.op.route_key()) {
                        Some(i) => self.shards[i].queue.push_back(q),
                        None => self.fail(q.op),
                    }
                }
                self.restart_feeds();
            }
            Err(e) => {
                debug!("cluster: cannot reach Redis: {e}");
                self.next_discovery = Instant::now() + self.discovery_backoff;
                self.discovery_backoff = (self.discovery_backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    fn connect_shards(&mut self) {
        let now = Instant::now();
        let Some(topology) = self.topology.clone() else {
            return;
        };
        for s in &mut self.shards {
            if s.con.is_some() || now < s.next_try {
                continue;
            }
            let attempt = self.shared.connect(&topology, &s.addr).and_then(|mut con| {
                // Before anything is sent: a pipeline that met NOSCRIPT half-way (a promoted
                // replica has no script cache) could not be sent again as a whole, as part of it
                // ran (once something else loaded the scripts) and part did not.
                load_all(&mut con)?;
                Ok(con)
            });
            match attempt {
                Ok(con) => {
                    debug!("cluster: command link to {} up", s.addr);
                    s.con = Some(con);
                    s.backoff = BACKOFF_MIN;
                }
                Err(e) => {
                    debug!("cluster: cannot reach {}: {e}", s.addr);
                    s.next_try = now + s.backoff;
                    s.backoff = (s.backoff * 2).min(BACKOFF_MAX);
                    // A master that does not answer may have been replaced.
                    self.stale = true;
                }
            }
        }
        // A shard back after a failure: the rooms we follow there continue after the last ids we
        // saw, before anything else is sent to it.
        let last = self.shared.last_ids();
        for i in 0..self.shards.len() {
            if self.shards[i].con.is_none() || !self.shards[i].failed {
                continue;
            }
            self.shards[i].failed = false;
            let mut rebases = Vec::new();
            for (room, id) in &last {
                if self.shard_of(&keys::room_tag(room)) == Some(i) {
                    rebases.push(Queued {
                        op: Op::Rebase {
                            room: room.clone(),
                            last: *id,
                        },
                        since: Instant::now(),
                    });
                }
            }
            for q in rebases.into_iter().rev() {
                self.shards[i].queue.push_front(q);
            }
        }
    }

    /// The reactor is told the link is up when every shard has a connection, down when none has
    /// (a single server: when it has none).
    fn tell_link(&mut self) {
        let connected = self.shards.iter().filter(|s| s.con.is_some()).count();
        let up = if self.told_up {
            connected > 0 && (self.is_cluster() || connected == self.shards.len())
        } else {
            connected > 0 && connected == self.shards.len()
        };
        self.shared.commands_up.store(up, Ordering::Release);
        if up != self.told_up {
            self.told_up = up;
            self.out.send(Notice::Commands { up });
        }
    }

    /// The connection to shard `i` failed.
    fn lost(&mut self, i: usize, e: &RedisError) {
        let s = &mut self.shards[i];
        debug!("cluster: command link to {} lost: {e}", s.addr);
        s.con = None;
        s.failed = true;
        s.next_try = Instant::now() + BACKOFF_MIN;
        s.backoff = BACKOFF_MIN * 2;
        if self.is_cluster() {
            self.stale = true;
        }
    }

    // ---- sending ----------------------------------------------------------------------------------

    /// Writes every shard's queue that may go now, as one pipeline per shard.
    fn send_all(&mut self) -> Vec<InFlight> {
        let now = Instant::now();
        let mut flights = Vec::new();
        for i in 0..self.shards.len() {
            if self.shards[i].ready(now) {
                flights.extend(self.send(i));
            }
        }
        flights
    }

    /// Writes shard `i`'s whole queue as one pipeline; [`Commands::receive`] reads its replies.
    fn send(&mut self, i: usize) -> Option<InFlight> {
        self.shards[i].full_logged = false;
        let cluster = self.is_cluster();
        let queue: Vec<Queued> = self.shards[i].queue.drain(..).collect();
        let mut pipe = redis::pipe();
        let mut sent: Vec<Sent> = Vec::with_capacity(queue.len());
        let mut run: Vec<Queued> = Vec::new();
        for q in queue {
            if matches!(q.op, Op::Post { .. }) {
                run.push(q);
                continue;
            }
            self.pack_posts(std::mem::take(&mut run), cluster, &mut pipe, &mut sent);
            pipe.add_command(self.command(&q.op));
            sent.push(Sent::One(q));
        }
        self.pack_posts(run, cluster, &mut pipe, &mut sent);
        let Some(con) = self.shards[i].con.as_mut() else {
            self.requeue(i, sent);
            return None;
        };
        match con.send_packed_command(&pipe.get_packed_pipeline()) {
            Ok(()) => Some(InFlight { shard: i, sent }),
            Err(e) => {
                self.lost(i, &e);
                // Sent again when the shard is back (or failed after the grace).
                self.requeue(i, sent);
                None
            }
        }
    }

    /// Reads the replies of a pipeline [`Commands::send`] wrote, and dispatches them.
    fn receive(&mut self, flight: InFlight) {
        if let Some(shard) = self.settle_replies(flight) {
            // Sent again at once, once: waiting would fail them (on a single server, whatever
            // waits has failed), and a post failed and served locally while the posts behind it
            // get Redis's ids would give one id twice.
            if let Some(f) = self.send(shard) {
                self.settle_replies(f);
            }
        }
    }

    /// [`Commands::receive`]'s work: the shard to send again when some replies met NOSCRIPT (the
    /// scripts are loaded again and what met it is back at the front of its queue).
    fn settle_replies(&mut self, flight: InFlight) -> Option<usize> {
        let InFlight { shard: i, sent } = flight;
        let mut replies = Vec::with_capacity(sent.len());
        let mut failed = None;
        if let Some(con) = self.shards[i].con.as_mut() {
            while replies.len() < sent.len() {
                match con.recv_response() {
                    Ok(v) => replies.push(v),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
        }
        // Scripts are loaded on connecting; a Redis that lost them since (SCRIPT FLUSH) gets them
        // again, and only what met NOSCRIPT is sent again: the rest ran. What has no reply (the
        // link broke) is sent again when the shard is back, or fails after the grace.
        let mut again = Vec::new();
        let mut sent = sent.into_iter();
        for v in replies {
            let s = sent.next().expect("bug: a reply for nothing sent");
            if is_noscript_value(&v) {
                again.push(s);
            } else {
                self.settle(i, s, v);
            }
        }
        let unanswered: Vec<Sent> = sent.collect();
        let mut resend = None;
        if let Some(e) = failed {
            self.lost(i, &e);
        } else if !again.is_empty() {
            match self.shards[i].con.as_mut().map(load_all) {
                Some(Err(e)) => self.lost(i, &e),
                Some(Ok(_)) => resend = Some(i),
                None => {}
            }
        }
        again.extend(unanswered);
        self.requeue(i, again);
        resend
    }

    /// Adds `posts` (consecutive in a shard's queue) to `pipe`: one `post.lua` call per slot in a
    /// cluster, per run on a single server, each room's posts in order.
    fn pack_posts(
        &mut self,
        posts: Vec<Queued>,
        cluster: bool,
        pipe: &mut redis::Pipeline,
        sent: &mut Vec<Sent>,
    ) {
        if posts.is_empty() {
            return;
        }
        // group → rooms in first-seen order → posts in order
        let mut groups: Vec<(u16, Vec<RoomPosts>)> = Vec::new();
        for q in posts {
            let Op::Post { room, .. } = &q.op else {
                unreachable!("bug: not a post")
            };
            let group = if cluster {
                slots::slot_of(keys::room_tag(room).as_bytes())
            } else {
                0
            };
            let g = match groups.iter().position(|g| g.0 == group) {
                Some(g) => g,
                None => {
                    groups.push((group, Vec::new()));
                    groups.len() - 1
                }
            };
            let rooms = &mut groups[g].1;
            match rooms.iter_mut().find(|r| r.0 == *room) {
                Some(r) => r.1.push(q),
                None => rooms.push((room.clone(), vec![q])),
            }
        }
        let s = Scripts::get();
        let ttl_us = self.settings.ttl.as_micros() as u64;
        for (_, rooms) in groups {
            // Keys first (EVALSHA's order), then the arguments written straight into the command:
            // no copy of any message but the command's own.
            let calls: Vec<(RoomKeys, Vec<Queued>)> = rooms
                .into_iter()
                .flat_map(|(room, posts)| {
                    let k = RoomKeys::of(&room);
                    chunks(posts, POSTS_PER_CALL)
                        .into_iter()
                        .map(move |chunk| (k.clone(), chunk))
                })
                .collect();
            let keys: Vec<&str> = calls
                .iter()
                .flat_map(|(k, _)| [k.meta.as_str(), k.log.as_str(), k.members.as_str()])
                .collect();
            let mut cmd = s.post.call(&keys);
            cmd.arg(ttl_us).arg(self.settings.history_max);
            let mut carried: Vec<Queued> = Vec::new();
            for (k, chunk) in calls {
                let member_sent = chunk
                    .iter()
                    .any(|q| matches!(q.op, Op::Post { conn: Some(_), .. }));
                cmd.arg(&k.channel)
                    .arg(self.seed.epoch())
                    .arg(chunk.len())
                    .arg(u8::from(member_sent));
                for q in &chunk {
                    if let Op::Post { name, content, .. } = &q.op {
                        cmd.arg(name.as_str()).arg(content.as_str());
                    }
                }
                carried.extend(chunk);
            }
            pipe.add_command(cmd);
            sent.push(Sent::Posts(carried));
        }
    }

    /// The script call for a non-post operation.
    fn command(&mut self, op: &Op) -> redis::Cmd {
        let s = Scripts::get();
        let ttl_us = self.settings.ttl.as_micros() as u64;
        match op {
            Op::Join {
                conn,
                room,
                wanted,
                follow,
            } => {
                let k = RoomKeys::of(room);
                let mut c = s.join.call(&k.all());
                c.arg(&k.channel)
                    .arg(wanted)
                    .arg(keys::member_field(&self.node, *conn))
                    .arg(self.seed.epoch())
                    .arg(if *follow { ttl_us } else { 0 })
                    .arg(&self.dead);
                c
            }
            Op::Leave { room, field } => {
                let k = RoomKeys::of(room);
                let mut c = s.leave.call(&k.all());
                c.arg(&k.channel).arg(field);
                c
            }
            Op::Global { text } => {
                let mut c = s.global.call(&GLOBAL_KEYS);
                c.arg(GLOBAL_CHANNEL)
                    .arg(ttl_us)
                    .arg(self.settings.history_max)
                    .arg(text);
                c
            }
            Op::Sync { room, members } => {
                let k = RoomKeys::of(room);
                let mut c = s.sync.call(&k.all());
                c.arg(&k.channel).arg(&self.node).arg(self.seed.epoch());
                for (conn, name) in members {
                    c.arg(keys::member_field(&self.node, *conn)).arg(name);
                }
                c
            }
            Op::Sweep { room } => {
                let k = RoomKeys::of(room);
                let mut c = s.sweep.call(&k.all());
                c.arg(&k.channel).arg(&self.dead);
                c
            }
            Op::Rebase { room, last } => {
                let k = RoomKeys::of(room);
                let mut c = s.rebase.call(&k.all());
                c.arg(&k.channel).arg(*last);
                c
            }
            Op::View { room, .. } => {
                let k = RoomKeys::of(room);
                let mut c = s.image.call(&[&k.meta, &k.log, &k.members]);
                c.arg(ttl_us);
                c
            }
            Op::Post { .. } => unreachable!("bug: posts are packed"),
        }
    }

    /// One reply: the answer to the reactor, or the operations to try again.
    fn settle(&mut self, i: usize, sent: Sent, reply: Value) {
        if let Value::ServerError(e) = &reply {
            let e: RedisError = e.clone().into();
            match slots::redirect_of(&e) {
                Some(Redirect::Moved { .. }) => {
                    // The slot has a new owner: read the topology again and route again.
                    self.stale = true;
                    self.next_discovery = Instant::now();
                    self.requeue(i, vec![sent]);
                    return;
                }
                Some(Redirect::Ask { .. }) => {
                    self.hold(i);
                    self.requeue(i, vec![sent]);
                    return;
                }
                None if matches!(e.code(), Some("TRYAGAIN")) => {
                    self.hold(i);
                    self.requeue(i, vec![sent]);
                    return;
                }
                None if is_link_error(&e) => {
                    self.lost(i, &e);
                    self.requeue(i, vec![sent]);
                    return;
                }
                None => {
                    error!("cluster: script refused: {e}");
                    match sent {
                        Sent::One(q) => self.fail(q.op),
                        Sent::Posts(qs) => qs.into_iter().for_each(|q| self.fail(q.op)),
                    }
                    return;
                }
            }
        }
        let Sent::One(q) = sent else {
            return; // posts come back on the feed
        };
        match q.op {
            Op::Join {
                conn, room, follow, ..
            } => {
                let answer = match &reply {
                    Value::Array(items) if items.len() >= 2 => text(&items[0]).zip(text(&items[1])),
                    _ => None,
                };
                let Some((name, epoch)) = answer else {
                    self.fail(Op::Join {
                        conn,
                        room,
                        wanted: String::new(),
                        follow,
                    });
                    return;
                };
                let image = match &reply {
                    Value::Array(items) if follow => items
                        .get(2)
                        .and_then(|v| parse_room_image(&room, v, &self.node)),
                    _ => None,
                };
                self.members.insert(conn, (room, name.clone()));
                self.out.send(Notice::Joined {
                    conn,
                    name,
                    epoch,
                    image,
                });
            }
            Op::Sync { room, .. } => {
                if let Some(epoch) = text(&reply) {
                    self.out.send(Notice::Epoch { room, epoch });
                }
            }
            Op::View { req, room } => {
                let image = parse_room_image(&room, &reply, &self.node);
                self.out.send(Notice::View { req, image });
            }
            Op::Sweep { .. } | Op::Leave { .. } | Op::Rebase { .. } | Op::Global { .. } => {}
            Op::Post { .. } => unreachable!("bug: posts are packed"),
        }
    }

    /// Puts what `sent` carried back at the front of shard `i`'s queue, in order, to be routed
    /// again if the topology changes meanwhile.
    fn requeue(&mut self, i: usize, sent: Vec<Sent>) {
        let mut back: Vec<Queued> = Vec::new();
        for s in sent {
            match s {
                Sent::One(q) => back.push(q),
                Sent::Posts(qs) => back.extend(qs),
            }
        }
        for q in back.into_iter().rev() {
            self.shards[i].queue.push_front(q);
        }
    }

    fn hold(&mut self, i: usize) {
        self.shards[i].hold_until = Instant::now() + MIGRATION_RETRY;
    }

    /// Operations that waited longer than the grace for their shard fail (delivered locally).
    fn fail_expired(&mut self) {
        let grace = self.grace();
        let now = Instant::now();
        let mut failed = Vec::new();
        for s in &mut self.shards {
            while s.queue.front().is_some_and(|q| now >= q.since + grace) {
                failed.extend(s.queue.pop_front().map(|q| q.op));
            }
        }
        if !failed.is_empty() && grace > Duration::ZERO {
            warn!(
                "cluster: {} operations for an unreachable shard failed after {grace:?}",
                failed.len()
            );
        }
        for op in failed {
            self.fail(op);
        }
    }

    /// An operation that cannot be done: what the reactor must do instead.
    fn fail(&mut self, op: Op) {
        match op {
            Op::Join { conn, .. } => self.out.send(Notice::JoinFailed { conn }),
            Op::Post {
                conn: Some(conn),
                content,
                ..
            } => self.out.send(Notice::PostFailed { conn, content }),
            Op::Post {
                conn: None,
                room,
                name,
                content,
            } => self.out.send(Notice::PublishFailed {
                room,
                name,
                content,
            }),
            Op::Global { text } => self.out.send(Notice::GlobalFailed { text }),
            Op::View { req, .. } => self.out.send(Notice::View { req, image: None }),
            // Redone by the next Sync after the outage.
            Op::Leave { .. } | Op::Sync { .. } | Op::Sweep { .. } | Op::Rebase { .. } => {}
        }
    }

    // ---- liveness ---------------------------------------------------------------------------------

    /// Notes this node alive and learns the dead ones; a newly dead node is swept from every room
    /// this node follows.
    fn heartbeat(&mut self) {
        let Some(i) = self.shard_of(NODES) else {
            return;
        };
        let Some(con) = self.shards[i].con.as_mut() else {
            return;
        };
        let reply = eval(
            con,
            &Scripts::get().heartbeat,
            &[NODES],
            (
                &self.node,
                NODE_TTL.as_millis() as u64,
                NODE_FORGET.as_millis() as u64,
            ),
        );
        let dead = match reply {
            Ok(v) => strings(&v).unwrap_or_default(),
            Err(e) => {
                if is_link_error(&e) {
                    self.lost(i, &e);
                } else {
                    error!("cluster: heartbeat refused: {e}");
                }
                return;
            }
        };
        let fresh = dead.iter().any(|d| !self.dead.contains(d));
        self.dead = dead;
        if fresh {
            debug!("cluster: dead nodes {:?}: sweeping", self.dead);
            for room in self.shared.followed() {
                self.queue(Op::Sweep { room });
            }
        }
    }

    /// The daemon stops: every member of ours leaves (one pipeline per shard), and the node leaves
    /// the registry.
    fn bye(&mut self) {
        let members: Vec<(u64, String)> = self
            .members
            .drain()
            .map(|(conn, (room, _))| (conn, room))
            .collect();
        for (conn, room) in members {
            let field = keys::member_field(&self.node, conn);
            self.queue(Op::Leave { room, field });
        }
        // Held shards too: this is the last chance.
        for i in 0..self.shards.len() {
            if self.shards[i].con.is_some() && !self.shards[i].queue.is_empty() {
                if let Some(f) = self.send(i) {
                    self.receive(f);
                }
            }
        }
        if let Some(i) = self.shard_of(NODES) {
            if let Some(con) = self.shards[i].con.as_mut() {
                let _ = redis::cmd("ZREM")
                    .arg(NODES)
                    .arg(&self.node)
                    .query::<Value>(con);
            }
        }
        self.shared.stop_feeds();
    }
}

fn is_noscript_value(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if is_noscript(&e.clone().into()))
}

/// `items` in chunks of at most `n`, in order.
fn chunks<T>(items: Vec<T>, n: usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    for item in items {
        match out.last_mut() {
            Some(last) if last.len() < n => last.push(item),
            _ => out.push(vec![item]),
        }
    }
    out
}
