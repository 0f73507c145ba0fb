//! A feed thread (`wisp-redis-feed-N`): the subscriptions on one shard, on a dedicated connection
//! (a subscribed connection can do nothing else; `subscriber` speaks it).
//!
//! It subscribes (`SSUBSCRIBE`) to the channel of every room this node follows whose slot its
//! shard owns, and to the global channel if its shard owns that; then it reads those rooms' images
//! (one script per room, all in one pipeline on a second connection) and sends them, then every
//! published event, in order. Rooms followed later are subscribed by the command thread through
//! this feed's handle, before the join that reads their image. Every second of silence it sends a
//! `PING`; five seconds without a byte and the connection is taken for lost.
//!
//! A slot that moves away makes Redis unsubscribe its channels (`sunsubscribe`): the feed asks the
//! command thread to read the topology again, which restarts every feed on the new one.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::debug;
use redis::{RedisResult, Value};

use super::keys::{self, RoomKeys, GLOBAL_CHANNEL, GLOBAL_KEYS};
use super::parse::{parse_event, parse_global_image, parse_room_image};
use super::scripts::{load_all, Scripts};
use super::slots::{parse_redirect, Topology};
use super::subscriber::{self, Push};
use super::{Notice, Request, Shared, ToReactor};
use super::{BACKOFF_MAX, BACKOFF_MIN, CONNECT_TIMEOUT, IO_TIMEOUT};
use crate::chat::{ClusterImage, GlobalImage};

/// A feed silent this long sends a `PING`.
const PING_EVERY: Duration = Duration::from_secs(1);
/// A feed that hears nothing (not even its `PING`s answered) for this long is treated as lost: it
/// catches half-open connections that TCP would keep for hours.
const FEED_SILENCE: Duration = Duration::from_secs(5);

pub(super) struct Feed {
    pub(super) topology: Arc<Topology>,
    pub(super) shard: usize,
    /// The feeds' generation this thread belongs to; it ends when `Shared` moves on.
    pub(super) gen: u64,
    pub(super) ttl_us: u64,
    pub(super) node: String,
    pub(super) shared: Arc<Shared>,
    pub(super) out: ToReactor,
    /// For [`Request::Check`] and [`Request::Rediscover`].
    pub(super) req: Sender<Request>,
}

impl Feed {
    fn current(&self) -> bool {
        !self.shared.stop.load(Ordering::Acquire)
            && self.shared.feed_gen.load(Ordering::Acquire) == self.gen
    }

    pub(super) fn run(self) {
        let mut backoff = BACKOFF_MIN;
        while self.current() {
            if !self.shared.commands_up.load(Ordering::Acquire) {
                thread::sleep(Duration::from_millis(20));
                continue;
            }
            let mut synced = false;
            let result = self.subscribe(&mut synced);
            self.shared.detach(self.shard, self.gen);
            if !self.current() {
                return; // replaced, not lost
            }
            if synced {
                // On a single server the node cannot follow anything without this feed; in a
                // cluster the other shards carry on, and this one's rooms get a fresh image when
                // it is back.
                if !self.topology.is_cluster() {
                    self.out.send(Notice::FeedDown);
                }
                backoff = BACKOFF_MIN;
            }
            if let Err(e) = result {
                debug!("cluster: feed from shard {} lost: {e}", self.shard);
            }
            if self.topology.is_cluster() {
                // The master may have been replaced.
                let _ = self.req.send(Request::Rediscover);
            }
            // Whatever broke the feed may have broken the command link too, silently: have it
            // checked before subscribing again, so the reactor never takes a half-dead bridge for up.
            let before = self.shared.checks.load(Ordering::Acquire);
            if self.req.send(Request::Check).is_err() {
                return;
            }
            while self.shared.checks.load(Ordering::Acquire) == before {
                if !self.current() {
                    return;
                }
                thread::sleep(Duration::from_millis(5));
            }
            thread::sleep(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn owns(&self, key: &str) -> bool {
        self.topology.shard_of_key(key.as_bytes()) == Some(self.shard)
    }

    /// Subscribes, sends the image, then forwards events until the connection fails.
    fn subscribe(&self, synced: &mut bool) -> io::Result<()> {
        let addr = &self.topology.masters()[self.shard];
        let (mut sub, handle) = subscriber::connect(addr, CONNECT_TIMEOUT)?;
        sub.set_read_timeout(Some(IO_TIMEOUT))?;
        // From here on, rooms followed anew are subscribed through `handle` by the command thread.
        let rooms = self
            .shared
            .attach(self.shard, self.gen, handle.clone(), |channel| {
                self.owns(channel)
            });
        let global = self.owns(GLOBAL_CHANNEL);
        let mut channels: Vec<String> = rooms.iter().map(|r| keys::channel_of(r)).collect();
        if global {
            channels.push(GLOBAL_CHANNEL.to_owned());
        }
        // One channel per SSUBSCRIBE: in a cluster, the channels of one command must share a slot.
        for channel in &channels {
            handle.ssubscribe(&[channel.as_bytes()])?;
        }
        // Until Redis confirms them all, what is published may not reach us: events meanwhile are
        // in the image anyway.
        let mut waiting: std::collections::HashSet<&str> =
            channels.iter().map(String::as_str).collect();
        let deadline = Instant::now() + IO_TIMEOUT;
        while !waiting.is_empty() {
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "subscriptions not confirmed",
                ));
            }
            match sub.next()? {
                Push::Subscribed { channel, .. } => {
                    let channel = String::from_utf8_lossy(&channel).into_owned();
                    waiting.remove(channel.as_str());
                    self.shared.confirm(&channel);
                }
                Push::Error(e) => return Err(io::Error::other(e)),
                Push::Message { .. } | Push::Unsubscribed { .. } | Push::Pong => {}
            }
        }
        // Subscribed: everything published from now on reaches us, so an image read now, followed
        // by the events, misses nothing (repeats are dropped by id or are idempotent).
        let image = self
            .image(addr, &rooms, global)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.out.send(Notice::FeedUp { image });
        *synced = true;
        sub.set_read_timeout(Some(PING_EVERY))?;
        let mut heard = Instant::now();
        loop {
            if !self.current() {
                return Ok(());
            }
            match sub.next() {
                Ok(push) => {
                    heard = Instant::now();
                    self.forward(push);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if heard.elapsed() >= FEED_SILENCE {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "feed silent"));
                    }
                    handle.ping()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn forward(&self, push: Push) {
        match push {
            Push::Message { channel, payload } => {
                let channel = String::from_utf8_lossy(&channel);
                if let Some(notice) = parse_event(&channel, &payload, &self.node) {
                    if let Notice::Messages { room, msgs, .. } = &notice {
                        if let Some(last) = msgs.last() {
                            self.shared.note_last(room, last.id);
                        }
                    }
                    self.out.send(notice);
                }
            }
            Push::Subscribed { channel, .. } => {
                self.shared.confirm(&String::from_utf8_lossy(&channel));
            }
            Push::Unsubscribed { channel, .. } => {
                // Asked for (an unfollow), or the slot moved away: then read the topology again.
                let channel = String::from_utf8_lossy(&channel);
                if let Some(room) = keys::room_of_channel(&channel) {
                    if self.shared.follows(&room) {
                        debug!("cluster: {channel} moved away from shard {}", self.shard);
                        let _ = self.req.send(Request::Rediscover);
                    }
                }
            }
            Push::Error(e) => {
                debug!("cluster: feed of shard {}: {e}", self.shard);
                if parse_redirect(&e).is_some() {
                    // A subscription sent to the wrong shard: the map is out of date.
                    let _ = self.req.send(Request::Rediscover);
                }
            }
            Push::Pong => {}
        }
    }

    /// The images of `rooms` (and of the global channel when `global`), in one pipeline.
    fn image(&self, addr: &str, rooms: &[String], global: bool) -> RedisResult<ClusterImage> {
        if rooms.is_empty() && !global {
            return Ok(ClusterImage::default());
        }
        let mut con = self.shared.connect(&self.topology, addr)?;
        let s = Scripts::get();
        let mut pipe = redis::pipe();
        for room in rooms {
            let k = RoomKeys::of(room);
            pipe.add_command(s.image.call(&[&k.meta, &k.log, &k.members]))
                .arg(self.ttl_us);
        }
        if global {
            pipe.add_command(s.global_image.call(&GLOBAL_KEYS[..2]))
                .arg(self.ttl_us);
        }
        let values: Vec<Value> = match pipe.query(&mut con) {
            Err(e) if super::scripts::is_noscript(&e) => {
                load_all(&mut con)?;
                pipe.query(&mut con)?
            }
            other => other?,
        };
        let mut image = ClusterImage::default();
        for (room, v) in rooms.iter().zip(&values) {
            if let Some(r) = parse_room_image(room, v, &self.node) {
                image.rooms.push(r);
            }
        }
        if global {
            if let Some(v) = values.get(rooms.len()) {
                let (messages, seq) = parse_global_image(v);
                image.global = Some(GlobalImage { messages, seq });
            }
        }
        Ok(image)
    }
}
