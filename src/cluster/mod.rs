//! The cluster bridge (`--redis URL`, SPEC §7): every Redis conversation, on helper threads.
//!
//! The reactor never waits on Redis. It hands [`Request`]s to the bridge through a std channel and gets
//! [`Notice`]s back through another, each batch announced by a `mio::Waker` registered in its `Poll`
//! (STYLE §8). Two threads do the work, because a subscribed Redis connection can do nothing else and
//! the sync client blocks:
//!
//! - **commands** (`wisp-redis`): one connection running Lua scripts, one per request (posts are
//!   pipelined when several are queued): join (cluster-wide name de-duplication), leave, post (id, time,
//!   history, trim, expiry and `PUBLISH`, atomically), global post, re-registration of our members
//!   after an outage; every second it refreshes this node's liveness key and sweeps the members of
//!   nodes whose key has expired, publishing their `leave`.
//! - **feed** (`wisp-redis-feed`): `PSUBSCRIBE wisp:room:*` + `SUBSCRIBE wisp:global wisp:hb` on a
//!   dedicated connection; once subscribed it reads a consistent image of the whole cluster (one Lua
//!   script) and sends it, then every published event, in order. The origin of a message does not
//!   deliver it locally: every node, the origin included, delivers what comes back on the feed, so all
//!   see one order, the order of `PUBLISH`, which is the order of the ids.
//!
//! Redis is "up" for the reactor when both links are; a fresh image after both are up marks the
//! moment the replica (see `chat::replica`) is in sync. Losing either link sends the reactor back to
//! serving locally; both threads reconnect by themselves with backoff.
//!
//! What it leaves to others: client sockets, the loop and when to send what are the reactor's, which
//! sees the bridge only as [`Bridge`] (a channel each way and the waker); what a notice means for
//! rooms, names and history is the chat's (`chat::replica`).
//!
//! # Layout
//!
//! - `mod.rs`: the interface ([`start`], [`Settings`], [`Bridge`], [`Request`], [`Notice`]) and
//!   what the two threads share.
//! - `commands`: the command thread.
//! - `feed`: the feed thread.
//! - `scripts`: the Lua scripts, one `scripts/*.lua` file each, and how they are run.
//! - `keys`: the key and channel layout in Redis.
//! - `parse`: what Redis sends, read back into notices and the image.
//! - `seed`: node ids and fresh room epochs.
//! - `slots`: Redis Cluster slot routing: key → slot → shard, the map read from the cluster,
//!   `MOVED`/`ASK` redirects (issue 14; not wired in yet).
//! - `subscriber`: a subscribed connection on a plain socket, for sharded pub/sub (`SSUBSCRIBE`),
//!   which the sync `redis` crate lacks (issue 14; not wired in yet).

mod commands;
mod feed;
mod keys;
mod parse;
mod scripts;
mod seed;
// Issue 14's building blocks, tested on their own until the threads use them.
/// `slots` and `subscriber` against real `redis-server`s (a standalone one, a 6-node cluster).
#[cfg(test)]
mod redis_tests;
#[allow(dead_code)]
mod slots;
#[allow(dead_code)]
mod subscriber;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::Waker;
use redis::Client;

use crate::chat::{ClusterImage, ClusterMessage, Micros, Origin, Presence};
use commands::Commands;
use feed::Feed;
use seed::Seed;

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
    },
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
    /// The reactor ignored the image of feed generation `gen` (commands were down then): make the
    /// feed resubscribe, for a fresh image.
    Resync { gen: u64 },
    /// The daemon stops: remove this node's members (their `leave` is published) and exit.
    Shutdown,
    /// From the feed, which lost its connection: check the command link (a Redis that restarted
    /// leaves it dead without a word), then count the check done in `Shared::checks`.
    Check,
}

/// What the bridge tells the reactor.
#[derive(Debug)]
pub(crate) enum Notice {
    /// The command link went up or down.
    Commands { up: bool },
    /// The feed is lost: events may be missed until the next [`Notice::FeedUp`].
    FeedDown,
    /// The feed is subscribed; `image` is the cluster state, and every event after it follows.
    FeedUp { gen: u64, image: ClusterImage },
    /// A room message.
    Message {
        room: String,
        epoch: String,
        msg: ClusterMessage,
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
    /// Answer to [`Request::Join`].
    Joined {
        conn: u64,
        name: String,
        epoch: String,
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

/// State the two threads share.
#[derive(Default)]
struct Shared {
    /// The command link is up; the feed waits for it before subscribing, so that the image it takes
    /// usually arrives when the reactor can use it.
    commands_up: AtomicBool,
    /// The feed's subscription generation (bumped on each subscription, before its image is read).
    feed_gen: AtomicU64,
    /// The feed connection's `CLIENT ID` while subscribed, 0 otherwise: the command thread kills it
    /// for [`Request::Resync`].
    feed_client: AtomicU64,
    /// [`Request::Check`]s done so far.
    checks: AtomicU64,
    stop: AtomicBool,
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
    pub(crate) url: String,
    pub(crate) ttl: Duration,
    pub(crate) history_max: usize,
}

/// Starts the bridge threads; `waker` wakes the reactor's poll. Fails only on a malformed URL (the
/// server being unreachable is not an error: the threads keep trying).
pub(crate) fn start(settings: Settings, waker: Waker) -> io::Result<Bridge> {
    let client = Client::open(settings.url.as_str())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let (req_tx, req_rx) = mpsc::channel();
    let (note_tx, note_rx) = mpsc::channel();
    let pending = Arc::new(AtomicBool::new(false));
    let out = ToReactor {
        tx: note_tx,
        waker: Arc::new(waker),
        pending: Arc::clone(&pending),
    };
    let shared = Arc::new(Shared::default());
    let mut seed = Seed::new();
    let node = format!("{:016x}", seed.next());
    let feed = Feed {
        req: req_tx.clone(),
        client: client.clone(),
        ttl_us: settings.ttl.as_micros() as u64,
        node: node.clone(),
        shared: Arc::clone(&shared),
        out: out.clone(),
    };
    thread::Builder::new()
        .name("wisp-redis-feed".into())
        .spawn(move || feed.run())?;
    let commands = Commands::new(client, settings, node, Arc::clone(&shared), out, seed);
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
