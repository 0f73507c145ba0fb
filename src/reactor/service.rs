//! The one seam between the loop and what runs on it.
//!
//! The reactor moves bytes: it accepts, reads, decodes requests and frames, keeps the budgets, writes
//! and closes. It knows nothing of rooms, HTTP answers or Redis. What it decodes it hands to a
//! [`Service`] (the daemon's is `crate::server::Server`), one call per thing that happened:
//!
//! | the reactor saw | it calls | the service answers with |
//! |---|---|---|
//! | a complete request head | [`Service::handle_request`] | [`Answer`]: bytes to send, or an upgrade |
//! | the upgrade went through (101 queued) | [`Service::handle_open`] | the connection's endpoint |
//! | a text or binary message | [`Service::handle_message`] | `Ok`, or a close code for that peer alone |
//! | an open connection ended | [`Service::handle_closed`] | — |
//! | one of its deadlines is due | [`Service::handle_timer`] | — |
//! | its waker fired (another thread) | [`Service::handle_wake`] | — |
//! | a connection it watches has written all it had | [`Service::handle_drained`] | — |
//!
//! During each call the service holds an [`Io`]: the only way back into the loop. Through it the
//! service queues frames (one connection's own, or one shared frame for many), arms its deadlines,
//! reads the clocks and the transport's counters, and asks for connections to be closed. A close
//! asked for through `Io` takes effect when the call returns, so a service is never re-entered.
//!
//! permessage-deflate stays below this seam: a compressed message reaches the service inflated, and
//! a frame the service sends goes compressed to the connections that negotiated it. The service
//! shares one frame; the reactor chooses, per recipient, that frame or its compressed twin.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::metrics::{Metrics, Transport};
use crate::protocol::frame::SharedFrame;
use crate::protocol::handshake::Request;
use crate::protocol::{CloseCode, OpCode};

use super::conn::{ConnKey, Phase};
use super::Core;

/// What a [`Service`] does with a request head.
#[derive(Debug)]
pub enum Answer<O> {
    /// Send these bytes (a whole HTTP answer). `KeepAlive::Yes` waits for the next request on the
    /// same connection; `No` closes it once the bytes are out.
    Respond(Vec<u8>, KeepAlive),
    /// Upgrade to a WebSocket. The reactor checks the handshake (RFC 6455 §4.2.1); when it passes,
    /// the 101 is queued and [`Service::handle_open`] gets `O` back. When it fails, the client gets
    /// the matching 4xx and `O` is dropped.
    Upgrade(O),
    /// The answer comes later, through [`Io::respond`] (the service asked someone else: the cluster
    /// bridge). Meanwhile nothing more is read from the connection; without an answer by the request
    /// deadline (`--handshake-timeout`), the client gets a `504` and the connection is closed.
    Later,
}

/// Whether a connection carries another request after this answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    Yes,
    No,
}

/// A complete data message from an open WebSocket (control frames are the reactor's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// Why an open connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// The peer closed, went away, broke the protocol, or was closed for a limit.
    Left,
    /// The daemon is shutting down: nothing is owed to the others (SPEC §4.4).
    Shutdown,
}

/// A frame queued once for many recipients this turn (see [`Io::share`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shared {
    /// Index into this turn's shared frames.
    pub(super) index: u32,
    /// The frame's length, so linking it costs no lookup per recipient.
    pub(super) len: u32,
}

/// What runs on the reactor.
pub trait Service {
    /// What an open WebSocket is attached to; kept in its slot, handed back with each message.
    type Endpoint: Copy + fmt::Debug;
    /// What an upgrade needs to open (the route's parameters), from the request to the 101.
    type Opening;
    /// What one of the service's deadlines is for.
    type Timer: Copy + fmt::Debug;

    /// The `Sec-WebSocket-Protocol` the 101 for `opening` names (RFC 6455 §4.2.2: one the client
    /// offered), if any.
    fn subprotocol(_opening: &Self::Opening) -> Option<&str> {
        None
    }

    /// How many body bytes the reactor should read for this request head (at most
    /// [`MAX_BODY`](crate::protocol::handshake::MAX_BODY)); 0, the default, reads none: a request
    /// announcing a body is then answered and closed. When the request's `Content-Length` is within
    /// the limit, [`Service::handle_request`] is called once the whole body is in, with it in
    /// `Request::body`.
    fn body_limit(&self, _req: &Request<'_>) -> usize {
        0
    }

    /// A complete request head arrived from `peer`.
    fn handle_request(
        &mut self,
        io: &mut Io<'_, Self>,
        conn: ConnKey,
        peer: IpAddr,
        req: &Request<'_>,
    ) -> Answer<Self::Opening>
    where
        Self: Sized;

    /// The upgrade asked for by [`Answer::Upgrade`] went through: the 101 is queued, so whatever is
    /// sent now follows it. Returns what the connection is attached to.
    fn handle_open(
        &mut self,
        io: &mut Io<'_, Self>,
        conn: ConnKey,
        peer: IpAddr,
        opening: Self::Opening,
    ) -> Self::Endpoint
    where
        Self: Sized;

    /// A data message. `Err` closes this connection alone with that code and reason.
    fn handle_message(
        &mut self,
        io: &mut Io<'_, Self>,
        conn: ConnKey,
        endpoint: Self::Endpoint,
        message: Message<'_>,
    ) -> Result<(), (CloseCode, &'static str)>
    where
        Self: Sized;

    /// An open connection ended; it receives nothing more.
    fn handle_closed(
        &mut self,
        io: &mut Io<'_, Self>,
        conn: ConnKey,
        endpoint: Self::Endpoint,
        why: Departure,
    ) where
        Self: Sized;

    /// A deadline armed with [`Io::arm_at`] or [`Io::arm_in`] is due.
    fn handle_timer(&mut self, io: &mut Io<'_, Self>, timer: Self::Timer)
    where
        Self: Sized;

    /// The waker from [`super::Reactor::waker`] fired.
    fn handle_wake(&mut self, io: &mut Io<'_, Self>)
    where
        Self: Sized;

    /// A connection marked with [`Io::notify_drained`] has written everything it had.
    fn handle_drained(&mut self, io: &mut Io<'_, Self>, conn: ConnKey, endpoint: Self::Endpoint)
    where
        Self: Sized;

    /// The loop is about to return (after the shutdown's close handshakes).
    fn handle_exit(&mut self);
}

/// The service's handle on the loop during one call.
pub struct Io<'a, S: Service> {
    pub(super) core: &'a mut Core<S>,
}

impl<S: Service> Io<'_, S> {
    /// Wall-clock time of this turn, microseconds since the Unix epoch.
    pub fn wall(&self) -> u64 {
        self.core.wall
    }

    /// Time since the reactor started.
    pub fn uptime(&self) -> Duration {
        self.core.now.duration_since(self.core.started)
    }

    /// The daemon's counters (the service counts its own events here too).
    pub fn metrics(&mut self) -> &mut Metrics {
        &mut self.core.metrics
    }

    /// The counters, read-only, with the transport's gauges.
    pub fn transport(&self) -> (&Metrics, Transport) {
        (&self.core.metrics, self.core.transport())
    }

    /// Queues one frame for one connection (copied once into this turn's output; a data frame
    /// compressed first when the connection negotiated permessage-deflate and that pays).
    pub fn send_frame(&mut self, conn: ConnKey, opcode: OpCode, payload: &[u8]) {
        self.core.send_frame(conn, opcode, payload);
    }

    /// Queues one text frame for one connection.
    pub fn send_text(&mut self, conn: ConnKey, text: &[u8]) {
        self.core.send_frame(conn, OpCode::Text, text);
    }

    /// Makes a frame available to this turn's output lists once; link it with [`Io::send_shared`].
    pub fn share(&mut self, frame: &SharedFrame) -> Shared {
        self.core.cork.share(frame)
    }

    /// Links a shared frame into one connection's output (no copy). Stale keys are skipped. A
    /// connection that negotiated permessage-deflate gets the frame's compressed twin instead,
    /// made once per shared frame at the first such connection (or the frame itself when
    /// compressing does not pay).
    pub fn send_shared(&mut self, conn: ConnKey, frame: Shared) {
        self.core.send_shared(conn, frame);
    }

    /// Queues `frame` for every connection in `to`.
    pub fn broadcast(&mut self, frame: &SharedFrame, to: impl IntoIterator<Item = ConnKey>) {
        let shared = self.share(frame);
        for conn in to {
            self.core.send_shared(conn, shared);
        }
    }

    /// The answer to a request answered [`Answer::Later`]: `bytes` (a whole HTTP answer) are sent and
    /// the connection closed once they are written. Nothing happens if the connection is gone or
    /// was answered already (its deadline passed).
    pub fn respond(&mut self, conn: ConnKey, bytes: &[u8]) {
        if matches!(
            self.core.conn(conn).map(|c| &c.phase),
            Some(Phase::AwaitingAnswer { .. })
        ) {
            self.core.answer_and_close(conn, bytes);
        }
    }

    /// Closes an open connection with `code` once the current call returns.
    pub fn close(&mut self, conn: ConnKey, code: CloseCode, reason: &'static str) {
        self.core.closing.push((conn, code, reason));
    }

    /// Attaches an open connection to another endpoint.
    pub fn set_endpoint(&mut self, conn: ConnKey, endpoint: S::Endpoint) {
        if self.core.reading == Some(conn) {
            self.core.reattached = Some(endpoint);
        } else if let Some(c) = self.core.conn_mut(conn) {
            if let Phase::Open { endpoint: e, .. } = &mut c.phase {
                *e = endpoint;
            }
        }
    }

    /// The endpoint of an open connection.
    pub fn endpoint(&self, conn: ConnKey) -> Option<S::Endpoint> {
        match &self.core.conn(conn)?.phase {
            Phase::Open { endpoint, .. } => Some(*endpoint),
            _ => None,
        }
    }

    /// Every open connection with its endpoint.
    pub fn open_connections(&self) -> impl Iterator<Item = (ConnKey, S::Endpoint)> + '_ {
        self.core.conns.iter().filter_map(|(i, c)| match &c.phase {
            Phase::Open { endpoint, .. } => Some((c.key(i), *endpoint)),
            _ => None,
        })
    }

    /// Calls [`Service::handle_drained`] once `conn` has written everything queued for it (at the
    /// end of this turn if its output is already empty then).
    pub fn notify_drained(&mut self, conn: ConnKey) {
        self.core.notify_drained(conn);
    }

    /// Bytes queued for `conn` and not yet written (this turn's and older).
    pub fn pending(&self, conn: ConnKey) -> usize {
        self.core.conn(conn).map_or(0, |c| c.pending())
    }

    /// Arms `timer` for wall-clock time `due` (microseconds since the Unix epoch); never early.
    pub fn arm_at(&mut self, timer: S::Timer, due: u64) {
        self.core.arm_at_wall(timer, due);
    }

    /// Arms `timer` for `after` from now; never early.
    pub fn arm_in(&mut self, timer: S::Timer, after: Duration) {
        self.core.arm_in(timer, after);
    }
}
