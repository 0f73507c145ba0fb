//! Wisp: an ephemeral chat server speaking RFC 6455, implemented from scratch.
//!
//! # Layout
//!
//! - [`protocol`]: the WebSocket core over byte slices (handshake, frames,
//!   masking, UTF-8, close codes, per-connection state), client side included.
//! - `config`: options and `WISP_*` variables turned into a validated `Config`.
//! - `reactor`: the one `mio` loop, its slab of connections and its timer wheel.
//! - `http`: routes and the answers to plain HTTP requests, the client page.
//! - `chat`: rooms, presence, names, history and its sixty-second expiry.
//! - `metrics`: the counters of SPEC §6 and their Prometheus text.
//! - `cluster`: the Redis bridge for `--redis` (SPEC §7), on its own threads, talking to the
//!   reactor through channels and a `mio::Waker`.
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

/// Internals reachable only for `benches/` (as httparse's `_benchable`); not an API.
#[doc(hidden)]
pub mod _benchable {
    pub use crate::reactor::conn::BenchFanout;
}
