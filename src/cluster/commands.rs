//! The command thread (`wisp-redis`): one connection running the Lua scripts, one per request
//! (posts pipelined when several are queued): joins, leaves, posts, global posts, re-registration
//! of our members after an outage, and every second this node's liveness and the sweeping of dead
//! nodes. It owns the link's ups and downs (connect, backoff, loss) and the list of our members the
//! cluster knows; what the scripts do inside Redis is `scripts`', what comes back on the feed is
//! `feed`'s.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error};
use redis::{Client, Connection, RedisError, RedisResult, Value};

use super::keys;
use super::parse::strings;
use super::scripts::{eval, is_noscript, Script, Scripts};
use super::seed::Seed;
use super::{Notice, Request, Settings, Shared, ToReactor};
use super::{BACKOFF_MAX, BACKOFF_MIN, CONNECT_TIMEOUT, IO_TIMEOUT};

/// How often the command thread refreshes this node's liveness key and sweeps dead nodes.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a node's liveness key outlives its last heartbeat: a node that dies leaves ghosts in
/// presence for at most `NODE_TTL + HEARTBEAT` (6 s).
const NODE_TTL: Duration = Duration::from_secs(5);
/// Most posts sent in one pipeline.
const BATCH: usize = 256;

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

pub(super) struct Commands {
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
    pub(super) fn new(
        client: Client,
        settings: Settings,
        node: String,
        shared: Arc<Shared>,
        out: ToReactor,
        seed: Seed,
    ) -> Commands {
        Commands {
            client,
            settings,
            node,
            shared,
            out,
            con: None,
            members: HashMap::new(),
            seed,
            stash: None,
            next_try: Instant::now(),
            backoff: BACKOFF_MIN,
        }
    }

    pub(super) fn run(mut self, rx: Receiver<Request>) {
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
                Request::Post { .. } | Request::GlobalPost { .. } | Request::Publish { .. } => {
                    let mut batch = vec![req];
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(
                                r @ (Request::Post { .. }
                                | Request::GlobalPost { .. }
                                | Request::Publish { .. }),
                            ) => batch.push(r),
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
        keys::member_field(&self.node, conn)
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
            Request::Post { .. } | Request::GlobalPost { .. } | Request::Publish { .. } => {
                self.posts(vec![req])
            }
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
                    pipe.add_command(post(room, name, content, ttl_us, max, fresh));
                }
                // A server API message: the same script under the name the backend chose.
                Request::Publish {
                    room,
                    name,
                    content,
                } => {
                    let fresh = self.seed.epoch();
                    pipe.add_command(post(room, name, content, ttl_us, max, fresh));
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
            Request::Publish {
                room,
                name,
                content,
            } => self.out.send(Notice::PublishFailed {
                room,
                name,
                content,
            }),
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

/// One post script call: `content` by `name` in `room`, numbered and stored within the history's
/// TTL and `--history-max`, with `fresh` as the room's epoch should it start over.
fn post(
    room: &str,
    name: &str,
    content: &str,
    ttl_us: u64,
    max: usize,
    fresh: String,
) -> redis::Cmd {
    let mut cmd = Scripts::get().post.cmd();
    cmd.arg(room)
        .arg(name)
        .arg(content)
        .arg(ttl_us)
        .arg(max)
        .arg(fresh);
    cmd
}
