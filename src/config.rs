//! Options and `WISP_*` environment variables turned into a validated [`Config`].
//!
//! Every option of SPEC §2 lives here with its default and the reason for it.
//! Nothing here touches a socket: `main` binds, the reactor serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// A chat message budget: `tokens` messages, refilled at `tokens` per `per_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub tokens: u32,
    pub per_secs: u64,
}

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "wisp",
    version,
    about = "Wisp: an ephemeral WebSocket chat server",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands besides serving.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// A terminal client: reads lines from stdin, prints events (e.g. `wisp client ws://127.0.0.1:8000/ws/lobby/alice`).
    Client {
        /// `ws://HOST:PORT/PATH`
        url: String,
    },
    /// Mints an HS256 connection token and prints it (for testing and operations), e.g.
    /// `wisp token --secret-file secret --sub alice --rooms 'lobby,team-*' --ttl 3600`.
    Token(TokenArgs),
}

/// `wisp token`'s options.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The HMAC secret the daemon verifies with (its --token-secret-file).
    #[arg(long, env = "WISP_TOKEN_SECRET_FILE", value_name = "PATH")]
    pub secret_file: PathBuf,
    /// The name the token grants (`sub`).
    #[arg(long, value_name = "NAME")]
    pub sub: String,
    /// Rooms granted: names and `prefix*` patterns, comma-separated (`*`: every room).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub rooms: Vec<String>,
    /// Seconds until the token expires.
    #[arg(long, default_value_t = 3600, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub ttl: u64,
    /// Also grant the HTTP history views (`history: true`).
    #[arg(long)]
    pub history: bool,
}

/// `--auth`: who may use the WebSocket paths and the history views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    // Plain comments, not doc comments: documented values would switch `--help` to its long
    // layout (a default on its own line), which scripts and tests read.
    // Anyone, under any name (no tokens).
    Open,
    // Only with a valid connection token; names come from tokens.
    Token,
}

/// The daemon's options (SPEC §2). Each also reads `WISP_<NAME>`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listen address (IPv4 or IPv6).
    #[arg(
        long,
        env = "WISP_BIND",
        default_value = "127.0.0.1:8000",
        value_name = "ADDR",
        value_parser = parse_bind
    )]
    pub bind: SocketAddr,
    /// Seconds a message is kept (and shown).
    #[arg(long, env = "WISP_HISTORY_TTL", default_value_t = 60, value_name = "SECS", allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub history_ttl: u64,
    /// Most messages kept per room (oldest dropped first).
    #[arg(long, env = "WISP_HISTORY_MAX", default_value_t = 1000, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub history_max: u64,
    /// Most bytes held by all histories together (every room and the global channel); the oldest
    /// messages, whatever their room, are dropped first. Default 64 MiB: sized for a small VM (1 GiB),
    /// where history is then bounded whatever the number of rooms.
    #[arg(long, env = "WISP_HISTORY_MAX_BYTES", default_value_t = 64 << 20, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range((64 << 10)..=(1 << 40)))]
    pub history_max_bytes: u64,
    /// Most bytes of history in a `welcome`; the rest follows as `message` events as the client reads.
    /// Default 256 KiB: a quarter of --max-outbound-bytes, so a joiner is never a slow consumer.
    #[arg(long, env = "WISP_WELCOME_HISTORY_BYTES", default_value_t = 256 << 10, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1024..=(1 << 30)))]
    pub welcome_history_bytes: u64,
    /// Seconds of silence after which the server pings a peer.
    #[arg(long, env = "WISP_PING_INTERVAL", default_value_t = 30, value_name = "SECS", allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub ping_interval: u64,
    /// Seconds of silence (no frame, no pong) after which a peer is dropped.
    #[arg(long, env = "WISP_IDLE_TIMEOUT", default_value_t = 75, value_name = "SECS", allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_timeout: u64,
    /// Seconds a connection has to complete its HTTP request (slowloris guard).
    #[arg(long, env = "WISP_HANDSHAKE_TIMEOUT", default_value_t = 10, value_name = "SECS", allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub handshake_timeout: u64,
    /// Largest message after reassembly; larger is closed with 1009.
    #[arg(long, env = "WISP_MAX_MESSAGE_BYTES", default_value_t = 65_536, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=(1 << 30)))]
    pub max_message_bytes: u64,
    /// Most open connections; beyond it new ones get HTTP 503 (default: from the file limit).
    #[arg(long, env = "WISP_MAX_CONNECTIONS", value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_connections: Option<u64>,
    /// Most connections from one address; 0 turns the limit off.
    #[arg(
        long,
        env = "WISP_MAX_CONNECTIONS_PER_IP",
        default_value_t = 0,
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub max_connections_per_ip: u32,
    /// Output pending for one peer beyond this closes it with 1008 (slow consumer).
    #[arg(long, env = "WISP_MAX_OUTBOUND_BYTES", default_value_t = 1_048_576, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1024..=(1 << 32)))]
    pub max_outbound_bytes: u64,
    /// Chat messages one connection may send per window, `N/SECS`; `0` turns every rate limit off
    /// (this one and --rate-limit-per-ip).
    #[arg(long, env = "WISP_RATE_LIMIT", default_value = "100/60", value_name = "N/SECS", value_parser = parse_rate_limit)]
    pub rate_limit: RateOption,
    /// Chat messages all connections from one address may send per window, `N/SECS`, so that
    /// reconnecting does not refill the budget; `0` turns it off. Default 300/60: three busy
    /// connections from one address (a family or an office behind NAT); a proxy in front counts as
    /// one address.
    #[arg(long, env = "WISP_RATE_LIMIT_PER_IP", default_value = "300/60", value_name = "N/SECS", value_parser = parse_rate_limit)]
    pub rate_limit_per_ip: RateOption,
    /// Token verifications (upgrades, history views, refreshes) one peer address may cause per
    /// window, `N/SECS`, under `--auth token`; beyond, `429` (or a `rate_limited` error for a
    /// refresh) without verifying. `0` turns it off (behind a proxy, every client shares its
    /// address). Default 600/60: an ES256 verification costs ~0.34 ms of the one reactor thread.
    #[arg(long, env = "WISP_TOKEN_CHECKS_PER_IP", default_value = "600/60", value_name = "N/SECS", value_parser = parse_rate_limit)]
    pub token_checks_per_ip: RateOption,
    /// Allowed `Origin` for upgrades (repeatable); others get HTTP 403. Default: any.
    #[arg(
        long = "allowed-origin",
        env = "WISP_ALLOWED_ORIGIN",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
    /// Disable the `/echo` endpoint.
    #[arg(long, env = "WISP_NO_ECHO", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub no_echo: bool,
    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it (the default).
    #[arg(long, overrides_with = "no_deflate")]
    pub deflate: bool,
    /// Decline permessage-deflate: every message goes uncompressed.
    #[arg(long, env = "WISP_NO_DEFLATE", overrides_with = "deflate", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub no_deflate: bool,
    /// Smallest message sent compressed; smaller ones go as they are. Default 256: compressing costs
    /// ~10 µs whatever the size, and a chat event of 128 bytes shrinks by 15 %, one of 256 by half
    /// (see docs/benchmarks.md).
    #[arg(long, env = "WISP_DEFLATE_MIN_BYTES", default_value_t = 256, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(0..=(1 << 30)))]
    pub deflate_min_bytes: u64,
    /// zlib compression level, 2 (fastest) to 9 (smallest). Default 2: each message is compressed
    /// once on the one reactor thread, and level 2 gets nearly all of level 6's gain on chat-sized
    /// JSON at a quarter of its cost on a `welcome` (see docs/benchmarks.md). Level 1 (zlib-rs's
    /// `deflate_quick`) is refused: it panics on some inputs under a sync flush.
    #[arg(long, env = "WISP_DEFLATE_LEVEL", default_value_t = 2, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(2..=9))]
    pub deflate_level: u32,
    /// Join a cluster through Redis (`redis://HOST:PORT`).
    #[arg(
        long,
        env = "WISP_REDIS",
        value_name = "URL",
        conflicts_with = "redis_cluster"
    )]
    pub redis: Option<String>,
    /// Join a cluster through a Redis Cluster: seed nodes, comma-separated
    /// (`redis://HOST:PORT,redis://HOST:PORT`); the others are found from them.
    #[arg(long, env = "WISP_REDIS_CLUSTER", value_name = "URLS")]
    pub redis_cluster: Option<String>,
    /// Microseconds a node gathers posts before it sends them to Redis, as one round trip and one
    /// script call (per shard). Every round trip costs Redis and the node a wake-up and a few
    /// system calls whatever it carries, so more posts per trip is less CPU per post, for up to this
    /// much added latency. 0: send at once (what queued during the previous trip still goes
    /// together).
    #[arg(long, env = "WISP_REDIS_BATCH_US", default_value_t = 2000, value_name = "US", allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub redis_batch_us: u64,
    /// `open`: anyone joins any room under any name; `token`: every WebSocket path and history view
    /// needs a valid connection token (the page and /healthz stay open). Default open: today's
    /// behaviour, for a demo or a trusted network.
    #[arg(long, env = "WISP_AUTH", default_value = "open", value_name = "MODE")]
    pub auth: AuthMode,
    /// The token signature algorithm: HS256, RS256, ES256 or EdDSA. Pinned here, never read from a
    /// token.
    #[arg(
        long,
        env = "WISP_TOKEN_ALG",
        default_value = "HS256",
        value_name = "ALG"
    )]
    pub token_alg: String,
    /// File holding the HS256 secret (at least 32 bytes; trailing whitespace ignored). Repeatable:
    /// any of them verifies (key rotation).
    #[arg(
        long = "token-secret-file",
        env = "WISP_TOKEN_SECRET_FILE",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub token_secret_files: Vec<PathBuf>,
    /// PEM public key for RS256, ES256 or EdDSA. Repeatable: any of them verifies (key rotation).
    #[arg(
        long = "token-public-key",
        env = "WISP_TOKEN_PUBLIC_KEY",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub token_public_keys: Vec<PathBuf>,
    /// When set, tokens must carry this `iss`.
    #[arg(long, env = "WISP_TOKEN_ISSUER", value_name = "ISS")]
    pub token_issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    #[arg(long, env = "WISP_TOKEN_AUDIENCE", value_name = "AUD")]
    pub token_audience: Option<String>,
    /// File holding a bearer token that /metrics then requires. Default: /metrics is open.
    #[arg(long, env = "WISP_METRICS_TOKEN_FILE", value_name = "PATH")]
    pub metrics_token_file: Option<PathBuf>,
    /// File holding the server API key (`Authorization: Bearer`); without it /api/ answers 404.
    #[arg(long, env = "WISP_API_KEY_FILE", value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
    /// Speak another application's protocol, so that its own clients work unchanged: `fastapi`
    /// (the seed rooms app's events in rooms, and the FastAPI documentation example's
    /// `/ws/{client_id}`). Default: Wisp's own.
    #[arg(long, env = "WISP_COMPAT", value_name = "MODE", value_enum)]
    pub compat: Option<Compat>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, env = "WISP_LOG", default_value = "info", value_name = "LEVEL", value_parser = parse_level)]
    pub log: log::LevelFilter,
}

/// `--compat`: whose protocol the daemon speaks besides its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compat {
    // The FastAPI seed apps: the rooms app's `system`/`presence` events and content rule, and the
    // documentation example's `/ws/{client_id}` channel. (A `//` comment: a doc comment here would
    // become help text of its own and switch `--help` to its long, multi-line layout.)
    Fastapi,
}

/// `--rate-limit` as parsed: `None` when turned off with `0`.
#[derive(Debug, Clone, Copy)]
pub struct RateOption(pub Option<RateLimit>);

fn parse_rate_limit(s: &str) -> Result<RateOption, String> {
    if s.trim() == "0" {
        return Ok(RateOption(None));
    }
    let (n, secs) = s
        .split_once('/')
        .ok_or("expected N/SECS, e.g. 100/60, or 0")?;
    let tokens: u32 = n.trim().parse().map_err(|_| format!("bad count '{n}'"))?;
    let per_secs: u64 = secs
        .trim()
        .parse()
        .map_err(|_| format!("bad window '{secs}'"))?;
    if tokens == 0 {
        return Ok(RateOption(None));
    }
    if per_secs == 0 {
        return Err("the window must be at least 1 second".into());
    }
    if tokens > 1_000_000 || per_secs > 1_000_000 {
        return Err("count and window are at most 1000000 each".into());
    }
    Ok(RateOption(Some(RateLimit { tokens, per_secs })))
}

/// `--bind`: `IP:PORT`, saying what is missing when the port is.
fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = s.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        let example = SocketAddr::new(ip, 8000);
        return Err(format!(
            "a port is needed: IP:PORT, e.g. {example} (port 0 picks a free one)"
        ));
    }
    Err("expected IP:PORT, e.g. 127.0.0.1:8000 or [::]:8000 (an address, not a host name)".into())
}

/// `--allowed-origin`: an origin as browsers send it, `scheme://host[:port]`, with no path, query
/// or credentials (a trailing `/` is tolerated). Returns why not, in words.
fn check_origin_value(o: &str) -> Result<(), String> {
    let Some((scheme, rest)) = o.split_once("://") else {
        return Err(
            "expected an origin, scheme://host[:port], e.g. https://chat.example.com".into(),
        );
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err(format!("'{scheme}' is not a URL scheme (http, https, ...)"));
    }
    if rest.contains(['/', '?', '#']) {
        return Err("an origin has no path, query or fragment: scheme://host[:port] only".into());
    }
    if rest.contains('@') {
        return Err("an origin has no user name or password".into());
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => (h, Some(p)),
        _ => (rest, None),
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err("the host is missing".into());
    }
    if let Some(p) = port {
        if p.parse::<u16>().is_err() {
            return Err(format!("'{p}' is not a port (0-65535)"));
        }
    }
    Ok(())
}

/// `--redis`: a URL the `redis` crate can connect with, or why not, in words.
fn check_redis_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("expected a URL, redis://HOST[:PORT][/DB], e.g. redis://127.0.0.1:6379".into());
    };
    match scheme {
        "redis" => {}
        "rediss" => return Err("TLS (rediss://) is not supported: use redis://".into()),
        "unix" | "redis+unix" => return Err(
            "Unix sockets are not supported (the subscriptions need TCP): use redis://HOST[:PORT]"
                .into(),
        ),
        _ => return Err(format!("the scheme is '{scheme}': use redis://HOST[:PORT]")),
    }
    if scheme == "redis" {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if authority.contains('@') {
            return Err("passwords are not supported (the subscriptions do not authenticate): use redis://HOST[:PORT]".into());
        }
        let host_port = authority;
        let (host, port) = match host_port.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => (h, Some(p)),
            _ => (host_port, None),
        };
        if host.is_empty() {
            return Err("the host is missing: redis://HOST[:PORT]".into());
        }
        if let Some(p) = port {
            if p.parse::<u16>().is_err() {
                return Err(format!("'{p}' is not a port (0-65535)"));
            }
        }
    }
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| format!("not a Redis URL the client accepts ({e})"))
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    match s.to_ascii_lowercase().as_str() {
        "error" => Ok(log::LevelFilter::Error),
        "warn" => Ok(log::LevelFilter::Warn),
        "info" => Ok(log::LevelFilter::Info),
        "debug" => Ok(log::LevelFilter::Debug),
        "trace" => Ok(log::LevelFilter::Trace),
        _ => Err("expected error, warn, info, debug or trace".into()),
    }
}

/// The validated configuration the reactor runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub history_ttl: Duration,
    pub history_max: usize,
    pub history_max_bytes: usize,
    /// At most half of `max_outbound_bytes` (see [`ServeArgs::into_config`]).
    pub welcome_history_bytes: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_message_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: u32,
    pub max_outbound_bytes: usize,
    pub rate_limit: Option<RateLimit>,
    /// `None` when off, and when `--rate-limit 0` turned every rate limit off.
    pub rate_limit_per_ip: Option<RateLimit>,
    /// `--token-checks-per-ip`; `None` when off.
    pub token_checks_per_ip: Option<RateLimit>,
    pub allowed_origins: Vec<String>,
    pub echo: bool,
    /// `--redis`'s URL, or `--redis-cluster`'s seeds as given.
    pub redis: Option<String>,
    /// Whether `redis` names the seeds of a Redis Cluster.
    pub redis_cluster: bool,
    /// `--redis-batch-us`.
    pub redis_batch: Duration,
    /// `Some` under `--auth token`.
    pub auth: Option<Arc<crate::server::auth::Verifier>>,
    /// `--metrics-token-file`'s contents.
    pub metrics_token: Option<Secret>,
    /// `--api-key-file`'s contents.
    pub api_key: Option<Secret>,
    /// `--compat`: `None` speaks Wisp's own protocol only.
    pub compat: Option<Compat>,
    /// permessage-deflate: `None` under `--no-deflate`.
    pub deflate: Option<DeflateConfig>,
    pub log: log::LevelFilter,
    /// Lines to log at `warn` once logging is up (a value adjusted to what the machine allows).
    pub warnings: Vec<String>,
}

/// permessage-deflate's settings (`--deflate-min-bytes`, `--deflate-level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateConfig {
    pub min_bytes: usize,
    pub level: u32,
}

/// How long we wait for the peer's close and FIN after our close frame (SPEC §4.3).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Descriptors kept back from `--max-connections` for the listener, the
/// poller, logs and a cluster bridge, so accepting never starves them.
const RESERVED_FDS: u64 = 32;

impl ServeArgs {
    /// Cross-option checks; an error names the option.
    pub fn into_config(self) -> Result<Config, String> {
        if self.idle_timeout <= self.ping_interval {
            return Err(format!(
                "--idle-timeout ({}) must be longer than --ping-interval ({}) so a peer can answer the ping",
                self.idle_timeout, self.ping_interval
            ));
        }
        if let Some(url) = &self.redis {
            check_redis_url(url).map_err(|e| format!("--redis {url}: {e}"))?;
        }
        if let Some(urls) = &self.redis_cluster {
            for url in urls.split(',').map(str::trim) {
                check_redis_url(url)
                    .and_then(|()| {
                        url.starts_with("redis://")
                            .then_some(())
                            .ok_or_else(|| "a cluster's nodes are redis://HOST:PORT".to_owned())
                    })
                    .and_then(|()| {
                        // A Redis Cluster has one database, 0.
                        let path = url["redis://".len()..].split_once('/').map(|(_, p)| p);
                        match path {
                            None | Some("" | "0") => Ok(()),
                            Some(_) => Err("a Redis Cluster has no database but 0".to_owned()),
                        }
                    })
                    .map_err(|e| format!("--redis-cluster {url}: {e}"))?;
            }
        }
        for origin in &self.allowed_origins {
            check_origin_value(origin).map_err(|e| format!("--allowed-origin {origin}: {e}"))?;
        }
        let auth = match self.auth {
            AuthMode::Open => None,
            AuthMode::Token => {
                let secrets = self
                    .token_secret_files
                    .iter()
                    .map(|p| read_secret("--token-secret-file", p).map(|s| s.0))
                    .collect::<Result<Vec<_>, _>>()?;
                let pems = self
                    .token_public_keys
                    .iter()
                    .map(|p| {
                        std::fs::read(p)
                            .map_err(|e| format!("--token-public-key {}: {e}", p.display()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Some(Arc::new(crate::server::auth::Verifier::new(
                    &self.token_alg,
                    &secrets,
                    &pems,
                    self.token_issuer.as_deref(),
                    self.token_audience.as_deref(),
                )?))
            }
        };
        let metrics_token = self
            .metrics_token_file
            .as_deref()
            .map(|p| read_secret("--metrics-token-file", p))
            .transpose()?;
        let api_key = self
            .api_key_file
            .as_deref()
            .map(|p| read_secret("--api-key-file", p))
            .transpose()?;
        let fd_limit = raise_fd_limit();
        let fd_allows = fd_limit.saturating_sub(RESERVED_FDS).max(1);
        let mut warnings = Vec::new();
        let max_connections = match self.max_connections {
            // Past the file limit, accept() fails with EMFILE and clients time out instead of
            // getting the 503 SPEC §2 promises: clamp, and say so once.
            Some(n) if n > fd_allows => {
                warnings.push(format!(
                    "--max-connections {n} is more than the open-file limit ({fd_limit}) allows; using {fd_allows}"
                ));
                fd_allows
            }
            Some(n) => n,
            None => fd_allows,
        };
        // One largest message (plus its header) must always fit, or a peer
        // receiving it would be called slow for no fault of its own.
        let max_outbound_bytes =
            (self.max_outbound_bytes as usize).max(self.max_message_bytes as usize + 1024);
        Ok(Config {
            bind: self.bind,
            history_ttl: Duration::from_secs(self.history_ttl),
            history_max: self.history_max as usize,
            history_max_bytes: self.history_max_bytes as usize,
            // A welcome, or a batch of catch-up after it, must leave room under the slow-consumer
            // cap for the events that go out meanwhile.
            welcome_history_bytes: (self.welcome_history_bytes as usize)
                .min(max_outbound_bytes / 2),
            ping_interval: Duration::from_secs(self.ping_interval),
            idle_timeout: Duration::from_secs(self.idle_timeout),
            handshake_timeout: Duration::from_secs(self.handshake_timeout),
            max_message_bytes: self.max_message_bytes as usize,
            max_connections: max_connections as usize,
            max_connections_per_ip: self.max_connections_per_ip,
            max_outbound_bytes,
            rate_limit: self.rate_limit.0,
            // SPEC §2: `--rate-limit 0` turns the rate limit off, per address included, as the load
            // generators and tests that pass it expect.
            rate_limit_per_ip: self.rate_limit.0.and(self.rate_limit_per_ip.0),
            token_checks_per_ip: self.token_checks_per_ip.0,
            allowed_origins: self
                .allowed_origins
                .into_iter()
                .map(|o| o.trim_end_matches('/').to_string())
                .collect(),
            echo: !self.no_echo,
            redis_cluster: self.redis_cluster.is_some(),
            redis_batch: Duration::from_micros(self.redis_batch_us),
            redis: self.redis.or(self.redis_cluster),
            auth,
            metrics_token,
            api_key,
            compat: self.compat,
            deflate: (!self.no_deflate).then_some(DeflateConfig {
                min_bytes: self.deflate_min_bytes as usize,
                level: self.deflate_level,
            }),
            log: self.log,
            warnings,
        })
    }
}

/// Key material read from a file; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// Reads a secret file for `option`: trailing whitespace (the newline editors add) is not part of
/// it; an empty one is refused.
pub fn read_secret(option: &str, path: &std::path::Path) -> Result<Secret, String> {
    let mut bytes = std::fs::read(path).map_err(|e| format!("{option} {}: {e}", path.display()))?;
    while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(format!("{option} {}: the file is empty", path.display()));
    }
    Ok(Secret(bytes))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the limit in force.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit struct read by the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["wisp"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        cli.serve.into_config()
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.bind, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(c.history_ttl, Duration::from_secs(60));
        assert_eq!(c.history_max, 1000);
        assert_eq!(c.ping_interval, Duration::from_secs(30));
        assert_eq!(c.idle_timeout, Duration::from_secs(75));
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.max_message_bytes, 65536);
        assert_eq!(c.max_outbound_bytes, 1 << 20);
        assert_eq!(
            c.rate_limit,
            Some(RateLimit {
                tokens: 100,
                per_secs: 60
            })
        );
        assert_eq!(
            c.rate_limit_per_ip,
            Some(RateLimit {
                tokens: 300,
                per_secs: 60
            })
        );
        assert_eq!(c.history_max_bytes, 64 << 20);
        assert_eq!(c.welcome_history_bytes, 256 << 10);
        assert!(c.echo);
        assert!(c.max_connections > 0);
        assert_eq!(
            c.deflate,
            Some(DeflateConfig {
                min_bytes: 256,
                level: 2
            })
        );
        assert_eq!(c.compat, None);
    }

    #[test]
    fn deflate_options() {
        assert_eq!(parse(&["--no-deflate"]).unwrap().deflate, None);
        assert!(parse(&["--no-deflate", "--deflate"])
            .unwrap()
            .deflate
            .is_some());
        let c = parse(&["--deflate-min-bytes", "0", "--deflate-level", "9"]).unwrap();
        assert_eq!(
            c.deflate,
            Some(DeflateConfig {
                min_bytes: 0,
                level: 9
            })
        );
        assert!(parse(&["--deflate-level", "1"])
            .unwrap_err()
            .contains("--deflate-level"));
    }

    #[test]
    fn compat_modes() {
        assert_eq!(
            parse(&["--compat", "fastapi"]).unwrap().compat,
            Some(Compat::Fastapi)
        );
        let err = parse(&["--compat", "django"]).unwrap_err();
        assert!(err.contains("--compat"), "{err}");
    }

    #[test]
    fn rate_limit_forms() {
        assert_eq!(parse(&["--rate-limit", "0"]).unwrap().rate_limit, None);
        assert_eq!(
            parse(&["--rate-limit", "5/2"]).unwrap().rate_limit,
            Some(RateLimit {
                tokens: 5,
                per_secs: 2
            })
        );
        assert!(parse(&["--rate-limit", "5"])
            .unwrap_err()
            .contains("--rate-limit"));
        assert!(parse(&["--rate-limit", "5/0"])
            .unwrap_err()
            .contains("--rate-limit"));
        // Per address: its own `0`, and `--rate-limit 0` turns both off.
        let c = parse(&["--rate-limit-per-ip", "0"]).unwrap();
        assert_eq!((c.rate_limit.is_some(), c.rate_limit_per_ip), (true, None));
        let c = parse(&["--rate-limit", "0", "--rate-limit-per-ip", "10/1"]).unwrap();
        assert_eq!((c.rate_limit, c.rate_limit_per_ip), (None, None));
        assert_eq!(
            parse(&["--rate-limit-per-ip", "10/1"])
                .unwrap()
                .rate_limit_per_ip,
            Some(RateLimit {
                tokens: 10,
                per_secs: 1
            })
        );
    }

    #[test]
    fn byte_budgets() {
        let c = parse(&["--history-max-bytes", "1048576"]).unwrap();
        assert_eq!(c.history_max_bytes, 1 << 20);
        // The welcome budget stays under half the slow-consumer cap.
        let c = parse(&["--max-outbound-bytes", "262144"]).unwrap();
        assert_eq!(c.welcome_history_bytes, 131_072);
        let c = parse(&["--welcome-history-bytes", "4096"]).unwrap();
        assert_eq!(c.welcome_history_bytes, 4096);
    }

    #[test]
    fn bad_values_name_their_option() {
        for (args, name) in [
            (&["--bind", "nowhere"][..], "--bind"),
            (&["--history-ttl", "0"], "--history-ttl"),
            (&["--history-ttl", "-1"], "--history-ttl"),
            (&["--max-message-bytes", "x"], "--max-message-bytes"),
            (&["--log", "loud"], "--log"),
            (&["--ping-interval", "80"], "--idle-timeout"),
            (&["--redis", "not a url"], "--redis"),
            (&["--history-max-bytes", "1000"], "--history-max-bytes"),
            (&["--history-max-bytes", "-5"], "--history-max-bytes"),
            (&["--welcome-history-bytes", "0"], "--welcome-history-bytes"),
            (&["--rate-limit-per-ip", "3"], "--rate-limit-per-ip"),
            (&["--allowed-origin", "example.com"], "--allowed-origin"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(name), "{args:?}: {err}");
        }
    }

    #[test]
    fn bind_without_a_port_says_a_port_is_needed() {
        for addr in ["127.0.0.1", "::1", "[::1]", "0.0.0.0"] {
            let err = parse(&["--bind", addr]).unwrap_err();
            assert!(
                err.contains("--bind") && err.contains("a port is needed"),
                "{addr}: {err}"
            );
        }
        let err = parse(&["--bind", "localhost:8000"]).unwrap_err();
        assert!(err.contains("expected IP:PORT"), "{err}");
        assert_eq!(
            parse(&["--bind", "[::1]:0"]).unwrap().bind,
            "[::1]:0".parse().unwrap()
        );
    }

    #[test]
    fn allowed_origins_must_look_like_origins() {
        let ok = parse(&[
            "--allowed-origin",
            "https://chat.example.com",
            "--allowed-origin",
            "http://127.0.0.1:8000/",
            "--allowed-origin",
            "http://[::1]:8000",
        ])
        .unwrap();
        assert_eq!(
            ok.allowed_origins,
            [
                "https://chat.example.com",
                "http://127.0.0.1:8000",
                "http://[::1]:8000"
            ]
        );
        for (bad, why) in [
            ("chat.example.com", "expected an origin"),
            ("https://chat.example.com/app", "no path"),
            ("https://chat.example.com?x=1", "no path, query"),
            ("https://user@chat.example.com", "no user name"),
            ("https://", "host is missing"),
            ("https://chat.example.com:http", "not a port"),
            ("1http://x", "not a URL scheme"),
        ] {
            let err = parse(&["--allowed-origin", bad]).unwrap_err();
            assert!(
                err.contains("--allowed-origin") && err.contains(why),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn bad_redis_urls_say_what_is_wrong() {
        for (bad, why) in [
            ("not a url", "expected a URL"),
            ("127.0.0.1:6379", "expected a URL"),
            ("http://127.0.0.1:6379", "the scheme is 'http'"),
            ("rediss://h:6379", "TLS"),
            ("redis://h:port", "'port' is not a port"),
            ("redis://:6379", "host is missing"),
            ("unix:///run/redis.sock", "Unix sockets"),
            ("redis://:secret@h:6379", "passwords"),
        ] {
            let err = parse(&["--redis", bad]).unwrap_err();
            assert!(err.contains("--redis") && err.contains(why), "{bad}: {err}");
        }
        assert!(parse(&["--redis", "redis://127.0.0.1:6379/0"]).is_ok());
    }

    #[test]
    fn a_redis_cluster_is_given_by_its_seeds() {
        let c = parse(&[
            "--redis-cluster",
            "redis://10.0.0.1:7001, redis://10.0.0.2:7001",
        ])
        .unwrap();
        assert!(c.redis_cluster);
        assert_eq!(
            c.redis.as_deref(),
            Some("redis://10.0.0.1:7001, redis://10.0.0.2:7001")
        );
        let err = parse(&["--redis-cluster", "redis://a:1,10.0.0.2:7001"]).unwrap_err();
        assert!(err.contains("--redis-cluster 10.0.0.2:7001"), "{err}");
        let err = parse(&["--redis-cluster", "redis://a:1/3"]).unwrap_err();
        assert!(err.contains("database"), "{err}");
        assert!(parse(&["--redis", "redis://a:1", "--redis-cluster", "redis://b:1"]).is_err());
        assert!(!parse(&["--redis", "redis://a:1"]).unwrap().redis_cluster);
        assert_eq!(
            parse(&["--redis", "redis://a:1"]).unwrap().redis_batch,
            Duration::from_millis(2)
        );
        assert_eq!(
            parse(&["--redis", "redis://a:1", "--redis-batch-us", "0"])
                .unwrap()
                .redis_batch,
            Duration::ZERO
        );
        assert!(parse(&["--redis-batch-us", "100001"]).is_err());
    }
}
