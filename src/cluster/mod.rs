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
//! # Keys (room names are cleaned: no control characters, no `/`)
//!
//! | key | type | what |
//! |---|---|---|
//! | `wisp:meta:{room}` | hash | `epoch`, `seq` (last id), `at` (last timestamp µs); lives while the room has members or history |
//! | `wisp:hist:{room}` | zset | message bodies `id\nat\nclient\ncontent`, score = timestamp µs; trimmed by TTL and `--history-max` |
//! | `wisp:members:{room}` | hash | `node:conn` → name |
//! | `wisp:names:{room}` | hash | name → `node:conn`, for de-duplication |
//! | `wisp:rooms` | set | room names, for the image |
//! | `wisp:node:{node}` | string | liveness, expires `NODE_TTL` after the last heartbeat |
//! | `wisp:nodes`, `wisp:noderooms:{node}` | sets | nodes, and the rooms each has members in, for sweeping |
//! | `wisp:global:hist`, `wisp:global:seq`, `wisp:global:at` | zset, counters | the global channel |
//!
//! Channels: `wisp:room:{room}` carries `m\nepoch\nid\nat\nclient\ncontent` and
//! `j|l|J|L\nepoch\nat\nnode:conn\nname` (upper case: a re-registration, which the node that made it
//! ignores); `wisp:global` carries `seq\nat\ntext`; `wisp:hb` a heartbeat that keeps idle feeds talking.

mod parse;
mod scripts;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, error};
use mio::Waker;
use redis::{Client, Connection, RedisError, RedisResult, Value};

use crate::chat::{ClusterImage, ClusterMessage, Micros, Origin, Presence};
use parse::{parse_event, parse_image, strings};
use scripts::{eval, is_noscript, Script, Scripts};

/// How often the command thread refreshes this node's liveness key and sweeps dead nodes.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a node's liveness key outlives its last heartbeat: a node that dies leaves ghosts in
/// presence for at most `NODE_TTL + HEARTBEAT` (6 s).
const NODE_TTL: Duration = Duration::from_secs(5);
/// Connecting to Redis gives up after this; a local Redis answers in microseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A command connection that takes longer than this to answer is treated as lost.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// A feed that hears nothing (not even the heartbeats every node publishes each second) for this
/// long is treated as lost: it catches half-open connections that TCP would keep for hours.
const FEED_SILENCE: Duration = Duration::from_secs(5);
/// Reconnection backoff: doubles from the first to the last.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Most posts sent in one pipeline.
const BATCH: usize = 256;

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
    let commands = Commands {
        client,
        settings,
        node,
        shared: Arc::clone(&shared),
        out,
        con: None,
        members: HashMap::new(),
        seed,
        stash: None,
        next_try: Instant::now(),
        backoff: BACKOFF_MIN,
    };
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

/// SplitMix64 over the start time, the pid and a counter: node ids and fresh epochs.
struct Seed(u64);

impl Seed {
    fn new() -> Seed {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Seed(t ^ (u64::from(std::process::id()) << 32))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn epoch(&mut self) -> String {
        format!("{:016x}", self.next())
    }
}

/// Whether `e` means the connection is unusable (as opposed to a script refusing its input).
fn is_link_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || matches!(
            e.code(),
            Some("LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" | "READONLY")
        )
}

// ---- the command thread -----------------------------------------------------------------------

struct Commands {
    client: Client,
    settings: Settings,
    node: String,
    shared: Arc<Shared>,
    out: ToReactor,
    /// `None` while Redis is unreachable.
    con: Option<Connection>,
    /// Our room members the cluster knows: conn → (room, name).
    members: HashMap<u64, (String, String)>,
    seed: Seed,
    /// A request taken from the channel while collecting a batch of posts, handled next.
    stash: Option<Request>,
    next_try: Instant,
    backoff: Duration,
}

impl Commands {
    fn run(mut self, rx: Receiver<Request>) {
        let mut next_beat = Instant::now();
        loop {
            let now = Instant::now();
            if self.con.is_none() && now >= self.next_try {
                self.connect();
                next_beat = now;
            }
            if self.con.is_some() && Instant::now() >= next_beat {
                self.heartbeat();
                next_beat = Instant::now() + HEARTBEAT;
            }
            let wake = if self.con.is_some() {
                next_beat
            } else {
                self.next_try
            };
            let req = match self.stash.take() {
                Some(req) => req,
                None => match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                    Ok(req) => req,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
            };
            match req {
                Request::Shutdown => {
                    self.bye();
                    return;
                }
                Request::Post { .. } | Request::GlobalPost { .. } => {
                    let mut batch = vec![req];
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(r @ (Request::Post { .. } | Request::GlobalPost { .. })) => {
                                batch.push(r)
                            }
                            Ok(other) => {
                                self.stash = Some(other);
                                break;
                            }
                            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                        }
                    }
                    self.posts(batch);
                }
                other => self.handle(other),
            }
        }
    }

    fn connect(&mut self) {
        let attempt = self
            .client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .and_then(|con| {
                con.set_read_timeout(Some(IO_TIMEOUT))?;
                con.set_write_timeout(Some(IO_TIMEOUT))?;
                Ok(con)
            });
        match attempt {
            Ok(con) => {
                debug!("cluster: command link to Redis up");
                self.con = Some(con);
                self.backoff = BACKOFF_MIN;
                self.shared.commands_up.store(true, Ordering::Release);
                self.out.send(Notice::Commands { up: true });
            }
            Err(e) => {
                debug!("cluster: cannot reach Redis: {e}");
                self.next_try = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// The command link failed: tell the reactor once and retry later.
    fn lost(&mut self, e: &RedisError) {
        debug!("cluster: command link to Redis lost: {e}");
        self.con = None;
        self.shared.commands_up.store(false, Ordering::Release);
        self.next_try = Instant::now() + BACKOFF_MIN;
        self.backoff = BACKOFF_MIN * 2;
        self.out.send(Notice::Commands { up: false });
    }

    /// Runs a script; `None` when it failed (the link is then marked lost if that was the cause).
    fn run_script<A: redis::ToRedisArgs>(&mut self, script: &Script, args: A) -> Option<Value> {
        let con = self.con.as_mut()?;
        match eval(con, script, args) {
            Ok(v) => Some(v),
            Err(e) if is_link_error(&e) => {
                self.lost(&e);
                None
            }
            Err(e) => {
                error!("cluster: script refused: {e}");
                None
            }
        }
    }

    fn field(&self, conn: u64) -> String {
        format!("{}:{conn}", self.node)
    }

    fn handle(&mut self, req: Request) {
        let s = Scripts::get();
        match req {
            Request::Join { conn, room, wanted } => {
                let field = self.field(conn);
                let fresh = self.seed.epoch();
                let answer = self
                    .run_script(
                        &s.join,
                        (&room, &wanted, &field, &self.node.clone(), &fresh),
                    )
                    .and_then(|v| match strings(&v).as_deref() {
                        Some([name, epoch]) => Some((name.clone(), epoch.clone())),
                        _ => None,
                    });
                match answer {
                    Some((name, epoch)) => {
                        self.members.insert(conn, (room, name.clone()));
                        self.out.send(Notice::Joined { conn, name, epoch });
                    }
                    None => self.out.send(Notice::JoinFailed { conn }),
                }
            }
            Request::Leave { conn } => {
                if let Some((room, _)) = self.members.remove(&conn) {
                    let field = self.field(conn);
                    let node = self.node.clone();
                    // Lost while Redis was away: the next Sync removes it.
                    let _ = self.run_script(&s.leave, (&room, &field, &node));
                }
            }
            Request::Sync {
                mut members,
                pending,
            } => {
                for conn in pending {
                    if let Some((room, name)) = self.members.get(&conn) {
                        members.push((conn, room.clone(), name.clone()));
                    }
                }
                self.members = members
                    .iter()
                    .map(|(conn, room, name)| (*conn, (room.clone(), name.clone())))
                    .collect();
                let mut args: Vec<String> = Vec::with_capacity(2 + 3 * members.len());
                args.push(self.node.clone());
                args.push(self.seed.epoch());
                for (conn, room, name) in members {
                    args.push(room);
                    args.push(self.field(conn));
                    args.push(name);
                }
                if let Some(v) = self.run_script(&s.sync, args) {
                    for pair in strings(&v).unwrap_or_default().chunks_exact(2) {
                        self.out.send(Notice::Epoch {
                            room: pair[0].clone(),
                            epoch: pair[1].clone(),
                        });
                    }
                }
            }
            Request::Resync { gen } => {
                let id = self.shared.feed_client.load(Ordering::Acquire);
                if id != 0 && self.shared.feed_gen.load(Ordering::Acquire) == gen {
                    if let Some(con) = self.con.as_mut() {
                        let r: RedisResult<Value> = redis::cmd("CLIENT")
                            .arg("KILL")
                            .arg("ID")
                            .arg(id)
                            .query(con);
                        if let Err(e) = r {
                            debug!("cluster: could not restart the feed: {e}");
                        }
                    }
                }
            }
            Request::Check => {
                if let Some(con) = self.con.as_mut() {
                    let r: RedisResult<Value> = redis::cmd("PING").query(con);
                    if let Err(e) = r {
                        self.lost(&e);
                    }
                }
                self.shared.checks.fetch_add(1, Ordering::AcqRel);
            }
            Request::Post { .. } | Request::GlobalPost { .. } => self.posts(vec![req]),
            Request::Shutdown => {}
        }
    }

    /// Publishes a batch of posts in one pipeline; any that cannot be published go back to the
    /// reactor to be delivered locally.
    fn posts(&mut self, batch: Vec<Request>) {
        let s = Scripts::get();
        let ttl_us = self.settings.ttl.as_micros() as u64;
        let max = self.settings.history_max;
        let mut pipe = redis::pipe();
        let mut sent = Vec::with_capacity(batch.len());
        for req in batch {
            match &req {
                Request::Post { conn, content } => {
                    let Some((room, name)) = self.members.get(conn) else {
                        // Not registered (joined while Redis was away, before the Sync).
                        self.fail(req);
                        continue;
                    };
                    let fresh = self.seed.epoch();
                    pipe.add_command(s.post.cmd())
                        .arg(room)
                        .arg(name)
                        .arg(content)
                        .arg(ttl_us)
                        .arg(max)
                        .arg(fresh);
                }
                Request::GlobalPost { text } => {
                    pipe.add_command(s.global.cmd())
                        .arg(text)
                        .arg(ttl_us)
                        .arg(max);
                }
                _ => unreachable!("bug: not a post"),
            }
            sent.push(req);
        }
        if sent.is_empty() {
            return;
        }
        let Some(con) = self.con.as_mut() else {
            sent.into_iter().for_each(|r| self.fail(r));
            return;
        };
        let mut result: RedisResult<Vec<Value>> = pipe.query(con);
        if matches!(&result, Err(e) if is_noscript(e)) {
            // A restarted Redis: load the scripts and try once more.
            for script in [&s.post, &s.global] {
                let _: RedisResult<Value> = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(&script.source)
                    .query(con);
            }
            result = pipe.query(con);
        }
        if let Err(e) = result {
            if is_link_error(&e) {
                self.lost(&e);
            } else {
                error!("cluster: post refused: {e}");
            }
            sent.into_iter().for_each(|r| self.fail(r));
        }
    }

    fn fail(&self, req: Request) {
        match req {
            Request::Post { conn, content } => self.out.send(Notice::PostFailed { conn, content }),
            Request::GlobalPost { text } => self.out.send(Notice::GlobalFailed { text }),
            _ => {}
        }
    }

    fn heartbeat(&mut self) {
        let ms = NODE_TTL.as_millis() as u64;
        let node = self.node.clone();
        if let Some(Value::Int(n)) = self.run_script(&Scripts::get().heartbeat, (&node, ms)) {
            if n > 0 {
                debug!("cluster: swept {n} members of dead nodes");
            }
        }
    }

    fn bye(&mut self) {
        let node = self.node.clone();
        let _ = self.run_script(&Scripts::get().bye, &node);
    }
}

// ---- the feed thread --------------------------------------------------------------------------

struct Feed {
    /// For [`Request::Check`] only.
    req: Sender<Request>,
    client: Client,
    ttl_us: u64,
    node: String,
    shared: Arc<Shared>,
    out: ToReactor,
}

impl Feed {
    fn run(self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                return;
            }
            if !self.shared.commands_up.load(Ordering::Acquire) {
                thread::sleep(Duration::from_millis(20));
                continue;
            }
            let mut synced = false;
            let result = self.subscribe(&mut synced);
            self.shared.feed_client.store(0, Ordering::Release);
            if synced {
                self.out.send(Notice::FeedDown);
                backoff = BACKOFF_MIN;
            }
            if let Err(e) = result {
                debug!("cluster: feed from Redis lost: {e}");
            }
            // Whatever broke the feed may have broken the command link too, silently: have it
            // checked before subscribing again, so the reactor never takes a half-dead bridge for up.
            let before = self.shared.checks.load(Ordering::Acquire);
            if self.req.send(Request::Check).is_err() {
                return;
            }
            while self.shared.checks.load(Ordering::Acquire) == before {
                if self.shared.stop.load(Ordering::Acquire) {
                    return;
                }
                thread::sleep(Duration::from_millis(5));
            }
            thread::sleep(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Subscribes, sends the image, then forwards events until the connection fails.
    fn subscribe(&self, synced: &mut bool) -> RedisResult<()> {
        let mut con = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        con.set_write_timeout(Some(IO_TIMEOUT))?;
        con.set_read_timeout(Some(IO_TIMEOUT))?;
        let id: u64 = redis::cmd("CLIENT").arg("ID").query(&mut con)?;
        con.set_read_timeout(Some(FEED_SILENCE))?;
        let mut sub = con.as_pubsub();
        sub.psubscribe("wisp:room:*")?;
        sub.subscribe(&["wisp:global", "wisp:hb"][..])?;
        // Subscribed: everything published from now on reaches us, so an image read now, followed
        // by the events, misses nothing (repeats are dropped by id or are idempotent).
        let gen = self.shared.feed_gen.fetch_add(1, Ordering::AcqRel) + 1;
        let image = {
            let mut c = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
            c.set_read_timeout(Some(IO_TIMEOUT))?;
            c.set_write_timeout(Some(IO_TIMEOUT))?;
            let v = eval(&mut c, &Scripts::get().image, self.ttl_us)?;
            parse_image(&v, &self.node)
        };
        self.shared.feed_client.store(id, Ordering::Release);
        self.out.send(Notice::FeedUp { gen, image });
        *synced = true;
        loop {
            let msg = sub.get_message()?;
            if let Some(notice) =
                parse_event(msg.get_channel_name(), msg.get_payload_bytes(), &self.node)
            {
                self.out.send(notice);
            }
        }
    }
}
