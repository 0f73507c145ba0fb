//! Options and `WISP_*` environment variables turned into a validated [`Config`].
//!
//! Every option of SPEC §2 lives here with its default and the reason for it.
//! Nothing here touches a socket: `main` binds, the reactor serves.

use std::net::SocketAddr;
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
}

/// The daemon's options (SPEC §2). Each also reads `WISP_<NAME>`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listen address (IPv4 or IPv6).
    #[arg(
        long,
        env = "WISP_BIND",
        default_value = "127.0.0.1:8000",
        value_name = "ADDR"
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
    #[arg(long, env = "WISP_REDIS", value_name = "URL")]
    pub redis: Option<String>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, env = "WISP_LOG", default_value = "info", value_name = "LEVEL", value_parser = parse_level)]
    pub log: log::LevelFilter,
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
    pub allowed_origins: Vec<String>,
    pub echo: bool,
    pub redis: Option<String>,
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
            redis::Client::open(url.as_str()).map_err(|e| format!("--redis {url}: {e}"))?;
        }
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
            allowed_origins: self
                .allowed_origins
                .into_iter()
                .map(|o| o.trim_end_matches('/').to_string())
                .collect(),
            echo: !self.no_echo,
            redis: self.redis,
            deflate: (!self.no_deflate).then_some(DeflateConfig {
                min_bytes: self.deflate_min_bytes as usize,
                level: self.deflate_level,
            }),
            log: self.log,
            warnings,
        })
    }
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
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(name), "{args:?}: {err}");
        }
    }
}
