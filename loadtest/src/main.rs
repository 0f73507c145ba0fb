//! `wisp-loadtest`: a load generator for Wisp and its comparison peers.
//!
//! # Layout
//!
//! - `engine`: many client WebSocket connections on one `mio` loop, spoken
//!   with Wisp's own client side (`wisp::protocol::client`).
//! - `scenarios`: idle, storm, echo, fanout, rooms, hostile: what to open,
//!   when to send, what to count.
//! - `attack`: the hostile scenario's attacker (one thread, blocking
//!   sockets, its own source addresses) and its RSS sampling.
//! - `coord`: one process, or `--procs N` children of this same binary that
//!   connect, report `READY`, run on `GO`, print their tally and wait for
//!   `EXIT`; the parent samples the server and merges.
//! - `ctx`: what a scenario needs from whoever runs it: its share of the
//!   connections, the nonce, the measured window (a shard's side of `coord`).
//! - `report`: tallies (mergeable), the report, its table and JSON.
//! - `svg`: the latency CDF chart; `compare`: the table across servers.
//! - `sys`: the monotonic clock and `/proc` (server CPU and RSS).

mod attack;
mod compare;
mod coord;
mod ctx;
mod engine;
mod report;
mod scenarios;
mod svg;
mod sys;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "wisp-loadtest",
    version,
    about = "Drives many WebSocket connections at a Wisp-compatible server and reports rates, latency, loss and server CPU per message"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Cmd {
    /// Open N connections, report handshakes/s, hold them, report the
    /// server's memory per connection.
    Idle(scenarios::IdleArgs),
    /// Connect, upgrade, close, as fast as possible: handshakes/s.
    Storm(scenarios::StormArgs),
    /// C connections echoing B-byte messages on /echo, 1 and 16 in flight.
    Echo(scenarios::EchoArgs),
    /// N receivers on one room (or /ws with --global), one sender at R msg/s.
    Fanout(scenarios::FanoutArgs),
    /// K rooms of M clients, every client sending R msg/s.
    Rooms(scenarios::RoomsArgs),
    /// Bystanders chat in one room at a steady rate and measure latency
    /// while one hostile client attacks (--kind); the server's peak RSS is
    /// sampled (loadtest/hostile.sh runs every kind).
    Hostile(scenarios::HostileArgs),
    /// Tabulate DIR/<scenario>/<server>.json written by compare.sh: server
    /// CPU per message and p99 with ratios to the floor and the best peer.
    Compare(compare::CompareArgs),
}

/// Options common to every scenario.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// The server, `ws://HOST:PORT` (the path is chosen by the scenario).
    #[arg(long, default_value = "ws://127.0.0.1:8000")]
    pub url: String,
    /// Another node of the same cluster, `ws://HOST:PORT` (repeatable;
    /// fanout and rooms): receivers are spread round-robin over `--url` and
    /// these, so one room spans several nodes. Senders of fanout stay on
    /// `--url`.
    #[arg(long = "also-url", value_name = "URL")]
    pub also_url: Vec<String>,
    /// Length of the measured window, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Number of loopback source addresses (127.0.0.1 ... 127.0.0.K).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=255))]
    pub sources: u16,
    /// The server's PID: its CPU (utime+stime) over the window and its RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Another process whose CPU over the window is reported (repeatable):
    /// the other nodes of a cluster, `redis-server`.
    #[arg(long = "also-pid", value_name = "PID")]
    pub also_pid: Vec<u32>,
    /// Where to write the JSON report (the SVG goes next to it).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Directory for `<scenario>.json` when --json is not given.
    #[arg(long, default_value = "target/loadtest")]
    pub out: PathBuf,
    /// Name of the server under test, carried into the report.
    #[arg(long, default_value = "server")]
    pub label: String,
    /// Processes to spread the connections over (each under its fd limit).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub procs: u16,
    /// Connections being opened at once.
    /// (Per process. Keep it under the server's listen backlog: an accept
    /// queue overflow costs the dropped SYN a one-second retransmit.)
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// The server relays raw payloads (the floor peer): expect no JSON and
    /// no welcome.
    #[arg(long)]
    pub raw: bool,
    /// Offer permessage-deflate (`client_no_context_takeover;
    /// server_no_context_takeover`) and inflate what the server sends
    /// compressed; what the generator sends stays uncompressed. The report
    /// says on how many connections the server accepted.
    #[arg(long)]
    pub deflate: bool,
    /// Longest wait for late messages after sending stops, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Internal: this process is shard I of --procs (set by the parent).
    #[arg(long, hide = true)]
    pub shard: Option<u16>,
    /// Internal: the run's nonce, shared by every shard.
    #[arg(long, hide = true)]
    pub nonce: Option<u32>,
}

impl Common {
    /// The servers' socket addresses: `--url` first, then each `--also-url`.
    pub fn targets(&self) -> Result<Vec<SocketAddr>, String> {
        std::iter::once(&self.url)
            .chain(&self.also_url)
            .map(|u| resolve(u))
            .collect()
    }
}

/// The IPv4 socket address of `ws://HOST:PORT[/...]`.
fn resolve(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("--url {url}: {e}"))?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| format!("--url {url}: no IPv4 address"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.cmd {
        Cmd::Compare(a) => compare::run(a),
        cmd => coord::drive(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wisp-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}
