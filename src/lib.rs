//! Wisp: an ephemeral chat server speaking RFC 6455, implemented from scratch.
//!
//! # Layout
//!
//! - [`protocol`]: the WebSocket core over byte slices (handshake, frames,
//!   masking, UTF-8, close codes, per-connection state), client side included.
//! - `config`: options and `WISP_*` variables turned into a validated `Config`.
//! - `reactor`: the one `mio` loop: sockets, the slab of connections, the receive buffer, the
//!   output cork, the timer wheel and every per-connection budget. It moves bytes and hands what it
//!   decodes to a `reactor::Service` through one narrow interface; it knows nothing of the rest.
//! - `server`: the daemon's service on the reactor: transport events to the chat, the HTTP answers
//!   and the cluster bridge, and chat output back to frames.
//! - `http`: routes, Origin/CORS and every plain answer (page, health, metrics, history views),
//!   built from a read-only view of the state.
//! - `chat`: rooms, presence, names, history and its sixty-second expiry.
//! - `metrics`: the counters of SPEC §6 and their Prometheus text.
//! - `cluster`: the Redis bridge for `--redis` (SPEC §7), on its own threads, talking to the
//!   server through channels and the reactor's `mio::Waker`.
#![warn(unreachable_pub)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod chat;
pub mod client;
mod cluster;
pub mod config;
pub mod http;
pub mod logger;
pub mod metrics;
pub mod protocol;
pub mod reactor;
pub mod server;

/// Internals reachable only for `benches/` (as httparse's `_benchable`); not an API.
#[doc(hidden)]
pub mod _benchable {
    pub use crate::reactor::cork::BenchFanout;
}
