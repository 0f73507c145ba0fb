//! The feed thread (`wisp-redis-feed`): `PSUBSCRIBE wisp:room:*` + `SUBSCRIBE wisp:global wisp:hb`
//! on a dedicated connection (a subscribed connection can do nothing else). Once subscribed it reads
//! a consistent image of the whole cluster (one Lua script) and sends it, then every published
//! event, in order. It owns the subscription's ups and downs; turning payloads into notices is
//! `parse`'s, and every write to Redis is the command thread's.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use log::debug;
use redis::{Client, RedisResult};

use super::keys::{GLOBAL_CHANNEL, HEARTBEAT_CHANNEL, ROOM_CHANNELS};
use super::parse::{parse_event, parse_image};
use super::scripts::{eval, Scripts};
use super::{Notice, Request, Shared, ToReactor};
use super::{BACKOFF_MAX, BACKOFF_MIN, CONNECT_TIMEOUT, IO_TIMEOUT};

/// A feed that hears nothing (not even the heartbeats every node publishes each second) for this
/// long is treated as lost: it catches half-open connections that TCP would keep for hours.
const FEED_SILENCE: Duration = Duration::from_secs(5);

pub(super) struct Feed {
    /// For [`Request::Check`] only.
    pub(super) req: Sender<Request>,
    pub(super) client: Client,
    pub(super) ttl_us: u64,
    pub(super) node: String,
    pub(super) shared: Arc<Shared>,
    pub(super) out: ToReactor,
}

impl Feed {
    pub(super) fn run(self) {
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
        sub.psubscribe(ROOM_CHANNELS)?;
        sub.subscribe(&[GLOBAL_CHANNEL, HEARTBEAT_CHANNEL][..])?;
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
