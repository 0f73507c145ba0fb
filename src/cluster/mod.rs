//! The cluster bridge (`--redis URL`, `--redis-cluster URL,...`; SPEC §7): every Redis
//! conversation, on helper threads.
//!
//! The reactor never waits on Redis. It hands [`Request`]s to the bridge through a std channel and gets
//! [`Notice`]s back through another, each batch announced by a `mio::Waker` registered in its `Poll`
//! (STYLE §8). The work is done by threads, because a subscribed Redis connection can do nothing else
//! and the sync client blocks:
//!
//! - **commands** (`wisp-redis`): one connection per shard (one for a single server), every write as
//!   a Lua script: joins (cluster-wide name de-duplication), leaves, posts (batched: one round trip
//!   and as few script calls as possible per shard and turn), global posts, re-registration of our
//!   members after an outage; every second this node's liveness and the sweeping of dead nodes. It
//!   reads the topology of a Redis Cluster and follows its changes (`MOVED`, failovers).
//! - **feeds** (`wisp-redis-feed-N`), one per shard: sharded subscriptions (`SSUBSCRIBE`) to the
//!   channels of the rooms this node follows (those with a member here) and to the global channel;
//!   once subscribed, the images of those rooms, then every published event, in order. The origin of
//!   a message does not deliver it locally: every node, the origin included, delivers what comes back
//!   on a feed, so all see one order per room, the order of `SPUBLISH`, which is the order of ids.
//!
//! A node follows a room while it has members there: the first local join subscribes to the room's
//! channel and then reads the room's image in the same script as the join ([`Notice::Joined`]); the
//! last local leave unsubscribes ([`Request::Unfollow`]). A node with no member in a room receives
//! nothing of it.
//!
//! Redis is "up" for the reactor when the command link is (every shard reachable at first; in a
//! cluster, later, as long as one is) and a feed has sent its image; a fresh image after that marks
//! the moment the replica (see `chat::replica`) is in sync. Losing a single server sends the reactor
//! back to serving locally; in a cluster, a lost shard only delays its own rooms' operations while
//! it fails over. Every thread reconnects by itself with backoff.
//!
//! What it leaves to others: client sockets, the loop and when to send what are the reactor's, which
//! sees the bridge only as [`Bridge`] (a channel each way and the waker); what a notice means for
//! rooms, names and history is the chat's (`chat::replica`).
//!
//! # Layout
//!
//! - `mod.rs`: the interface ([`start`], [`Settings`], [`Bridge`], [`Request`], [`Notice`]) and
//!   what the threads share ([`Shared`]: the followed rooms, the feeds' handles).
//! - `commands`: the command thread; `feed`: the feed threads.
//! - `slots`: hash slots and the topology of a Redis Cluster; `subscriber`: sharded pub/sub on a
//!   plain connection.
//! - `scripts`: the Lua scripts, one `scripts/*.lua` file each, and how they are run.
//! - `keys`: the key and channel layout in Redis.
//! - `parse`: what Redis sends, read back into notices and images.
//! - `seed`: node ids and fresh room epochs.

mod commands;
mod feed;
mod keys;
mod parse;
/// `slots` and `subscriber` against real `redis-server`s (a standalone one, a 6-node cluster).
#[cfg(test)]
mod redis_tests;
mod scripts;
mod seed;
mod slots;
mod subscriber;

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::Waker;
use redis::{Client, Connection, RedisResult};

use crate::chat::{ClusterImage, ClusterMessage, Micros, Origin, Presence, RoomImage};
use commands::Commands;
use seed::Seed;
use slots::Topology;
use subscriber::SubHandle;

/// Connecting to Redis gives up after this; a local Redis answers in microseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A command connection that takes longer than this to answer is treated as lost.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnection backoff: doubles from the first to the last.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the reactor asks of the bridge. `conn` is the member's `MemberId`.
#[derive(Debug)]
pub(crate) enum Request {
    /// A client joins `room` (cleaned) asking for `wanted` (cleaned): answered by
    /// [`Notice::Joined`] or [`Notice::JoinFailed`].
    Join {
        conn: u64,
        room: String,
        wanted: String,
        /// This node starts following the room: subscribe to its channel first, and answer with
        /// its image.
        follow: bool,
    },
    /// This node has no member left in `room`: unsubscribe from its channel.
    Unfollow { room: String },
    /// An HTTP view of `room`, which this node does not follow: read its image, answered by
    /// [`Notice::View`]. `req` is the reactor's token for the request.
    View { req: u64, room: String },
    /// A member joined `room` locally while Redis was away: subscribe to its channel (its image
    /// comes with the feeds' next images).
    Follow { room: String },
    /// A member left (no-op for one the bridge does not know).
    Leave { conn: u64 },
    /// A member's checked message; [`Notice::PostFailed`] if it could not be published.
    Post { conn: u64, content: String },
    /// A global-channel message; [`Notice::GlobalFailed`] if it could not be published.
    GlobalPost { text: String },
    /// A message from the server API, sent as `name` (not a member) to `room` (cleaned);
    /// [`Notice::PublishFailed`] if it could not be published.
    Publish {
        room: String,
        name: String,
        content: String,
    },
    /// Redis is back: these are all our room members (conn, room, name); register them and forget
    /// any other member of this node. Answered by [`Notice::Epoch`] per room.
    Sync {
        members: Vec<(u64, String, String)>,
        /// Members whose Join is in flight: kept as the bridge knows them.
        pending: Vec<u64>,
    },
    /// The reactor ignored a feed's image (commands were down then): make the feeds resubscribe,
    /// for fresh images.
    Resync,
    /// From a feed: the topology may have changed (a lost master, a slot moved away).
    Rediscover,
    /// The daemon stops: remove this node's members (their `leave` is published) and exit.
    Shutdown,
    /// From a feed, which lost its connection: check the command links (a Redis that restarted
    /// leaves them dead without a word), then count the check done in `Shared::checks`.
    Check,
}

/// What the bridge tells the reactor.
#[derive(Debug)]
pub(crate) enum Notice {
    /// The command link went up or down.
    Commands { up: bool },
    /// The feed of a single server is lost: events may be missed until the next
    /// [`Notice::FeedUp`]. (In a cluster, a shard's lost feed is not told: its rooms get a fresh
    /// image when it is back.)
    FeedDown,
    /// The feed is subscribed; `image` is the state of the global channel and of every room this
    /// node follows, and every event after it follows.
    FeedUp { image: ClusterImage },
    /// Room messages, in id order (one published batch).
    Messages {
        room: String,
        epoch: String,
        msgs: Vec<ClusterMessage>,
    },
    /// A join or leave.
    Presence {
        room: String,
        epoch: String,
        kind: Presence,
        name: String,
        at: Micros,
        origin: Origin,
        /// Published by a node re-registering its members after an outage.
        resync: bool,
        /// The member's connection on its node (ours when `origin` is `Here`).
        conn: u64,
    },
    /// A global-channel message.
    Global { seq: u64, at: Micros, text: String },
    /// Answer to [`Request::Join`]; `image` when the join asked to follow the room.
    Joined {
        conn: u64,
        name: String,
        epoch: String,
        image: Option<RoomImage>,
    },
    /// Answer to [`Request::Join`] when Redis is unreachable: join locally.
    JoinFailed { conn: u64 },
    /// A post that could not be published: deliver it locally.
    PostFailed { conn: u64, content: String },
    /// A global post that could not be published: deliver it locally.
    GlobalFailed { text: String },
    /// A server API message that could not be published: deliver it locally.
    PublishFailed {
        room: String,
        name: String,
        content: String,
    },
    /// Answer to [`Request::View`]: the room's image, `None` if Redis could not be asked.
    View { req: u64, image: Option<RoomImage> },
    /// The room's epoch in the cluster (after [`Request::Sync`]).
    Epoch { room: String, epoch: String },
}

/// The bridge's side of the notice channel: send, then wake the reactor unless a wake is pending.
#[derive(Clone)]
struct ToReactor {
    tx: Sender<Notice>,
    waker: Arc<Waker>,
    /// Set by the bridge when it wakes the reactor, cleared by the reactor before it drains the
    /// channel: one `eventfd` write per batch rather than per notice.
    pending: Arc<AtomicBool>,
}

impl ToReactor {
    fn send(&self, notice: Notice) {
        if self.tx.send(notice).is_ok() && !self.pending.swap(true, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
    }
}

/// State the bridge's threads share.
struct Shared {
    /// The command link is up; feeds wait for it before subscribing, so that the image they take
    /// usually arrives when the reactor can use it.
    commands_up: AtomicBool,
    /// The feeds' generation: a feed thread whose generation is not this one ends.
    feed_gen: AtomicU64,
    /// [`Request::Check`]s done so far.
    checks: AtomicU64,
    stop: AtomicBool,
    /// The first seed as given: on a single server, the URL every connection uses (its database).
    url: String,
    /// For the feeds' requests to the command thread.
    requests: Mutex<Sender<Request>>,
    subs: Mutex<Subs>,
    /// Signalled when a subscription is confirmed.
    confirmed: Condvar,
}

/// Subscriptions, between the command thread (which follows and unfollows rooms) and the feeds.
#[derive(Default)]
struct Subs {
    /// The rooms this node follows.
    rooms: HashSet<String>,
    /// Each shard's live feed: its handle, under the generation it belongs to.
    handles: HashMap<usize, (u64, SubHandle)>,
    /// Subscriptions confirmed so far, per channel.
    confirms: HashMap<String, u64>,
    /// The last id each followed room's feed delivered (for rebasing after a failover).
    last: HashMap<String, u64>,
}

/// How long following a room waits for Redis to confirm the subscription.
const CONFIRM_WAIT: Duration = Duration::from_secs(1);

impl Shared {
    /// A command connection to master `addr` of `topology`, with the I/O timeouts: on a single
    /// server through the URL as given (its database), in a cluster to the master itself.
    fn connect(&self, topology: &Topology, addr: &str) -> RedisResult<Connection> {
        let target = if topology.is_cluster() {
            format!("redis://{addr}")
        } else {
            self.url.clone()
        };
        let con = Client::open(target.as_str())?.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        con.set_read_timeout(Some(IO_TIMEOUT))?;
        con.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(con)
    }

    fn subs(&self) -> MutexGuard<'_, Subs> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn requests(&self) -> Sender<Request> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Follows `room`: subscribes to `channel` on `shard`'s feed if it is connected, and waits for
    /// Redis to confirm (a feed that connects later subscribes to it with the others).
    fn subscribe(&self, room: &str, channel: &str, shard: Option<usize>) {
        let mut subs = self.subs();
        subs.rooms.insert(room.to_owned());
        let Some(handle) = shard
            .and_then(|i| subs.handles.get(&i))
            .map(|h| h.1.clone())
        else {
            return;
        };
        let before = subs.confirms.get(channel).copied().unwrap_or(0);
        if handle.ssubscribe(&[channel.as_bytes()]).is_err() {
            return; // the feed is going down; it subscribes again when back
        }
        let deadline = Instant::now() + CONFIRM_WAIT;
        while subs.confirms.get(channel).copied().unwrap_or(0) <= before {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log::debug!("cluster: subscription to {channel} not confirmed");
                return;
            }
            subs = self
                .confirmed
                .wait_timeout(subs, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn unsubscribe(&self, room: &str, channel: &str, shard: Option<usize>) {
        let mut subs = self.subs();
        subs.rooms.remove(room);
        subs.last.remove(room);
        if let Some((_, handle)) = shard.and_then(|i| subs.handles.get(&i)) {
            let _ = handle.sunsubscribe(&[channel.as_bytes()]);
        }
    }

    /// A feed of generation `gen` is connected to `shard`: from now on it is the one to subscribe
    /// through. Returns the followed rooms whose channel `owns` says is its.
    fn attach(
        &self,
        shard: usize,
        gen: u64,
        handle: SubHandle,
        owns: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let mut subs = self.subs();
        subs.handles.insert(shard, (gen, handle));
        subs.rooms
            .iter()
            .filter(|r| owns(&keys::channel_of(r)))
            .cloned()
            .collect()
    }

    fn detach(&self, shard: usize, gen: u64) {
        let mut subs = self.subs();
        if subs.handles.get(&shard).is_some_and(|h| h.0 == gen) {
            subs.handles.remove(&shard);
        }
    }

    fn confirm(&self, channel: &str) {
        *self.subs().confirms.entry(channel.to_owned()).or_default() += 1;
        self.confirmed.notify_all();
    }

    fn follows(&self, room: &str) -> bool {
        self.subs().rooms.contains(room)
    }

    fn followed(&self) -> Vec<String> {
        self.subs().rooms.iter().cloned().collect()
    }

    fn note_last(&self, room: &str, id: u64) {
        let mut subs = self.subs();
        if subs.rooms.contains(room) {
            subs.last.insert(room.to_owned(), id);
        }
    }

    fn last_ids(&self) -> Vec<(String, u64)> {
        self.subs()
            .last
            .iter()
            .map(|(r, id)| (r.clone(), *id))
            .collect()
    }

    /// Ends every feed thread (their connections are shut down) and returns the next generation.
    fn stop_feeds(&self) -> u64 {
        let gen = self.feed_gen.fetch_add(1, Ordering::AcqRel) + 1;
        let mut subs = self.subs();
        for (_, (_, handle)) in subs.handles.drain() {
            handle.shutdown();
        }
        gen
    }
}

/// The reactor's handle on the bridge.
pub(crate) struct Bridge {
    tx: Sender<Request>,
    rx: Receiver<Notice>,
    pending: Arc<AtomicBool>,
    commands: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

/// What the bridge needs to know of the configuration.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// `--redis`: one URL; `--redis-cluster`: the seed nodes.
    pub(crate) seeds: Vec<String>,
    pub(crate) ttl: Duration,
    pub(crate) history_max: usize,
    /// `--redis-batch-us`: how long the command thread gathers posts for one round trip.
    pub(crate) batch: Duration,
}

/// Starts the bridge threads; `waker` wakes the reactor's poll. Fails only if a thread cannot be
/// started (Redis being unreachable is not an error: the threads keep trying).
pub(crate) fn start(settings: Settings, waker: Waker) -> io::Result<Bridge> {
    let (req_tx, req_rx) = mpsc::channel();
    let (note_tx, note_rx) = mpsc::channel();
    let pending = Arc::new(AtomicBool::new(false));
    let out = ToReactor {
        tx: note_tx,
        waker: Arc::new(waker),
        pending: Arc::clone(&pending),
    };
    let shared = Arc::new(Shared {
        commands_up: AtomicBool::new(false),
        feed_gen: AtomicU64::new(0),
        checks: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        url: settings.seeds.first().cloned().unwrap_or_default(),
        requests: Mutex::new(req_tx.clone()),
        subs: Mutex::new(Subs::default()),
        confirmed: Condvar::new(),
    });
    let mut seed = Seed::new();
    let node = format!("{:016x}", seed.next());
    let commands = Commands::new(settings, node, Arc::clone(&shared), out, seed);
    let handle = thread::Builder::new()
        .name("wisp-redis".into())
        .spawn(move || commands.run(req_rx))?;
    Ok(Bridge {
        tx: req_tx,
        rx: note_rx,
        pending,
        commands: Some(handle),
        shared,
    })
}

impl Bridge {
    /// Queues a request (never blocks).
    pub(crate) fn send(&self, req: Request) {
        let _ = self.tx.send(req);
    }

    /// Takes every notice waiting, in order. Call after the waker's event.
    pub(crate) fn drain(&self) -> Vec<Notice> {
        self.pending.store(false, Ordering::Release);
        let mut out = Vec::new();
        while let Ok(n) = self.rx.try_recv() {
            out.push(n);
        }
        out
    }

    /// Asks the bridge to remove this node's members from the cluster and waits up to `within` for it.
    pub(crate) fn shutdown(mut self, within: Duration) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.tx.send(Request::Shutdown);
        let Some(handle) = self.commands.take() else {
            return;
        };
        let deadline = Instant::now() + within;
        while !handle.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
}
