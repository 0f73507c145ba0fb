//! The scenarios: what to open, when to send, what to count.
//!
//! `hostile` is a chat scenario (bystanders in one room) with an attacker
//! from `crate::attack` running through its measured window.
//!
//! Every loop here is bounded in time (a deadline derived from `--duration`,
//! `--drain` and a fixed connect budget) and in count (connections and
//! messages are fixed before it starts).
//!
//! Chat messages carry `~NONCE:SENT_NS:SENDER:SEQ~` followed by `x` padding
//! up to `--size` bytes, or with `--text chat` by English words (see
//! [`Text`]). Every recipient finds the marker (in a raw relay or
//! in a JSON `message` event's `content`), subtracts the send time from its
//! arrival time (both `CLOCK_MONOTONIC`, shared by every shard), and counts
//! what it got, so latency is measured at every recipient, the last one
//! included, and loss is per receiver.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use clap::Args;
use wisp::protocol::OpCode;

use crate::ctx::Ctx;
use crate::engine::{ConnId, Deflate, Engine, Note};
use crate::report::{Report, Tally};
use crate::sys::now_ns;
use crate::{Cmd, Common};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
/// Longest the connection phase may take, whatever the count.
const CONNECT_BUDGET: u64 = 120 * SEC;
/// Longest we wait for a join/welcome storm to quiet down before measuring.
const SETTLE_BUDGET: u64 = 60 * SEC;

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub conns: u64,
    /// Path to upgrade on.
    #[arg(long, default_value = "/ws")]
    pub path: String,
}

#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    #[command(flatten)]
    pub common: Common,
    /// Path to upgrade on.
    #[arg(long, default_value = "/ws")]
    pub path: String,
    /// A connection token every upgrade carries as `?token=` (a server under `--auth token`).
    /// One token for every connection: on a room path the server refuses a second connection
    /// under the same name (409), so use `/ws` or `--concurrency 1` there.
    #[arg(long, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// As `--token`, read from a file (surrounding whitespace ignored): keeps it out of `ps`.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<std::path::PathBuf>,
}

impl StormArgs {
    /// The request target: `--path`, with `token=` added to its query when a token is given.
    fn target(&self) -> io::Result<String> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => t.trim().to_string(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map_err(|e| io::Error::other(format!("--token-file {}: {e}", f.display())))?
                .trim()
                .to_string(),
            (None, None) => return Ok(self.path.clone()),
        };
        if token.is_empty() {
            return Err(io::Error::other("--token: empty"));
        }
        let sep = if self.path.contains('?') { '&' } else { '?' };
        Ok(format!("{}{sep}token={}", self.path, query_escape(&token)))
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (a JWT is all unreserved).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Args, Debug, Clone)]
pub struct EchoArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections.
    #[arg(short = 'n', long, default_value_t = 100)]
    pub conns: u64,
    /// Message size, bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Messages in flight per connection; one measured window per value.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub inflight: Vec<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections in the room; connection 0 also sends.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub conns: u64,
    /// Messages per second sent.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Message size, bytes (at least the ~40-byte marker).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Use the global channel /ws instead of a room.
    #[arg(long)]
    pub global: bool,
    /// What fills a message after its marker.
    #[arg(long, value_enum, default_value_t = Text::X)]
    pub text: Text,
}

#[derive(Args, Debug, Clone)]
pub struct RoomsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Rooms.
    #[arg(long, default_value_t = 100)]
    pub rooms: u64,
    /// Clients per room.
    #[arg(long, default_value_t = 10)]
    pub per_room: u64,
    /// Messages per second sent by each sending client.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Clients of each room that send (the first ones to join); default:
    /// all of them. One sender per room at a fixed rate keeps the
    /// deliveries per second the same whatever the room size.
    #[arg(long)]
    pub senders: Option<u64>,
    /// Message size, bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// What fills a message after its marker.
    #[arg(long, value_enum, default_value_t = Text::X)]
    pub text: Text,
}

/// What fills a chat message after its marker, up to `--size`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    /// `x` repeated: the historical filler. DEFLATE shrinks a run of one
    /// byte to almost nothing, so it flatters any compression figure.
    X,
    /// Words drawn from [`WORDS`] (256 common English words), separated by
    /// spaces, chosen by a generator seeded from the sender and the sequence
    /// number: deterministic, different in every message, and about as
    /// compressible as real English of the same length (a message compresses
    /// on its own: no context takeover, so no vocabulary is learnt across
    /// messages; see the `chat_text_compresses_like_english` test).
    Chat,
}

impl Text {
    pub fn name(self) -> &'static str {
        match self {
            Text::X => "x",
            Text::Chat => "chat",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct HostileArgs {
    #[command(flatten)]
    pub common: Common,
    /// The attack run while the bystanders chat.
    #[arg(long, value_enum)]
    pub kind: crate::attack::Kind,
    /// Bystanders in one room; each sends in turn and all receive.
    #[arg(long, default_value_t = 4)]
    pub bystanders: u64,
    /// Bystander messages per second, all together (keep each bystander
    /// under the server's rate limits: 100/60 per connection, 300/60 per
    /// address by default).
    #[arg(long, default_value_t = 4.0)]
    pub rate: f64,
    /// Message size, bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// The attacker stops once the server's RSS passes this (MiB), so an
    /// unbounded server does not take the machine down; the report says so.
    #[arg(long, default_value_t = 1024)]
    pub rss_cap_mib: u64,
    /// The attacker's first source address is 127.0.0.N (it may use up to
    /// 50 from there); keep it apart from the bystanders' `--sources`.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(2..=200))]
    pub attacker_source: u8,
}

/// What runs next to a chat scenario's measured window (the hostile
/// scenario's attacker and RSS sampling); the plain scenarios use
/// [`NoHooks`].
pub trait WindowHooks {
    /// Connections are open and settled; called just before the window.
    fn start(&mut self) {}
    /// Called on every turn of the window's loop.
    fn tick(&mut self) {}
    /// Sending and draining are over; add to the tally.
    fn stop(&mut self, _t: &mut Tally) {}
}

pub struct NoHooks;

impl WindowHooks for NoHooks {}

pub fn common(cmd: &Cmd) -> &Common {
    match cmd {
        Cmd::Idle(a) => &a.common,
        Cmd::Storm(a) => &a.common,
        Cmd::Echo(a) => &a.common,
        Cmd::Fanout(a) => &a.common,
        Cmd::Rooms(a) => &a.common,
        Cmd::Hostile(a) => &a.common,
        Cmd::Compare(_) => unreachable!("bug: compare is not a scenario"),
    }
}

pub fn supports_procs(cmd: &Cmd) -> bool {
    matches!(cmd, Cmd::Idle(_) | Cmd::Fanout(_) | Cmd::Rooms(_))
}

/// Scenarios that spread their connections over `--url` and `--also-url`.
pub fn supports_nodes(cmd: &Cmd) -> bool {
    matches!(cmd, Cmd::Fanout(_) | Cmd::Rooms(_))
}

pub fn phase_suffix(cmd: &Cmd, i: usize) -> String {
    match cmd {
        Cmd::Echo(a) => format!("inflight{}", a.inflight[i]),
        _ => format!("{i}"),
    }
}

pub fn run(cmd: &Cmd, ctx: &mut Ctx, fd_limit: u64) -> io::Result<Vec<Tally>> {
    let targets = ctx.c.targets().map_err(io::Error::other)?;
    let deflate = if ctx.c.deflate {
        Deflate::Offer
    } else {
        Deflate::Off
    };
    let mut eng = Engine::new(&targets, ctx.c.sources as usize, deflate)?;
    let local = |n: u64| (0..n).filter(|&g| ctx.mine(g)).count() as u64;
    let want = match cmd {
        Cmd::Idle(a) => local(a.conns),
        Cmd::Echo(a) => a.conns,
        Cmd::Fanout(a) => local(a.conns),
        Cmd::Rooms(a) => local(a.rooms * a.per_room),
        Cmd::Hostile(a) => a.bystanders,
        _ => 0,
    };
    if want + 32 > fd_limit {
        return Err(io::Error::other(format!(
            "{want} connections in one process over its open-file limit {fd_limit}: use --procs"
        )));
    }
    let out = match cmd {
        Cmd::Idle(a) => vec![idle(ctx, &mut eng, a)?],
        Cmd::Storm(a) => vec![storm(ctx, &mut eng, a)?],
        Cmd::Echo(a) => echo(ctx, &mut eng, a)?,
        Cmd::Fanout(a) => vec![chat(
            ctx,
            &mut eng,
            &Chat::fanout(a, ctx.nonce),
            &mut NoHooks,
        )?],
        Cmd::Rooms(a) => vec![chat(
            ctx,
            &mut eng,
            &Chat::rooms(a, ctx.nonce),
            &mut NoHooks,
        )?],
        Cmd::Hostile(a) => {
            let target = crate::attack::Target {
                addr: targets[0],
                first_source: a.attacker_source,
                room: format!("lt{:08x}", ctx.nonce),
            };
            let mut hooks =
                crate::attack::HostileHooks::new(a.kind, target, ctx.c.server_pid, a.rss_cap_mib);
            vec![chat(
                ctx,
                &mut eng,
                &Chat::hostile(a, ctx.nonce),
                &mut hooks,
            )?]
        }
        Cmd::Compare(_) => unreachable!("bug: compare is not a scenario"),
    };
    ctx.progress_done();
    eng.drop_all();
    Ok(out)
}

/// The report of a merged tally: what each scenario counts as its unit.
pub fn finalize(cmd: &Cmd, t: &Tally, phase: usize) -> Report {
    use serde_json::json;
    let mut r = match cmd {
        Cmd::Idle(a) => {
            // The window is the hold: no unit of work, the figures are the
            // handshake rate before it and the memory held during it.
            let mut r = Report::from_tally("idle", t, "connection", 0);
            r.params.insert("conns".into(), json!(a.conns));
            r.params.insert("path".into(), json!(a.path));
            r
        }
        Cmd::Storm(a) => {
            let mut r = Report::from_tally("storm", t, "handshake", t.opened);
            r.params.insert("path".into(), json!(a.path));
            // Whether the upgrades carried a token; never the token itself.
            r.params.insert(
                "token".into(),
                json!(a.token.is_some() || a.token_file.is_some()),
            );
            r.params
                .insert("concurrency".into(), json!(a.common.concurrency));
            r.params.insert("closed".into(), json!(t.closed));
            r
        }
        Cmd::Echo(a) => {
            let mut r = Report::from_tally("echo", t, "message", t.delivered);
            r.params.insert("conns".into(), json!(a.conns));
            r.params.insert("size".into(), json!(a.size));
            r.params.insert("inflight".into(), json!(a.inflight[phase]));
            r
        }
        Cmd::Fanout(a) => {
            let mut r = Report::from_tally("fanout", t, "delivery", t.delivered);
            r.params.insert("conns".into(), json!(a.conns));
            r.params.insert("rate".into(), json!(a.rate));
            r.params.insert("size".into(), json!(a.size));
            r.params.insert("text".into(), json!(a.text.name()));
            r.params.insert(
                "endpoint".into(),
                json!(if a.global {
                    "/ws"
                } else {
                    "/ws/{room}/{client}"
                }),
            );
            r
        }
        Cmd::Rooms(a) => {
            let mut r = Report::from_tally("rooms", t, "delivery", t.delivered);
            r.params.insert("rooms".into(), json!(a.rooms));
            r.params.insert("per_room".into(), json!(a.per_room));
            r.params.insert(
                "senders_per_room".into(),
                json!(a.senders.unwrap_or(a.per_room)),
            );
            r.params.insert("rate".into(), json!(a.rate));
            r.params.insert("size".into(), json!(a.size));
            r.params.insert("text".into(), json!(a.text.name()));
            r
        }
        Cmd::Hostile(a) => {
            let mut r = Report::from_tally("hostile", t, "delivery", t.delivered);
            r.params.insert("kind".into(), json!(a.kind.name()));
            r.params.insert("bystanders".into(), json!(a.bystanders));
            r.params.insert("rate".into(), json!(a.rate));
            r.params.insert("size".into(), json!(a.size));
            r.params.insert("rss_cap_mib".into(), json!(a.rss_cap_mib));
            r.server.rss_peak = t.rss_peak;
            r.attack.clone_from(&t.attack);
            r
        }
        Cmd::Compare(_) => unreachable!("bug: compare is not a scenario"),
    };
    r.params
        .insert("deflate".into(), json!(common(cmd).deflate));
    if matches!(cmd, Cmd::Idle(_) | Cmd::Storm(_)) {
        // Their unit of work is the connection; the handshake window is the
        // connection phase (idle) or the whole run (storm).
        r.handshakes_per_s = r.handshakes_per_s.or(Some(r.ops_per_s));
    }
    r
}

/// The engine's counters and this process's CPU when a window starts.
struct WindowStart {
    io: crate::engine::IoStats,
    cpu_us: u64,
}

/// This process's CPU so far (0 if `/proc` cannot say).
fn own_cpu_us() -> u64 {
    crate::sys::cpu_us(std::process::id()).unwrap_or(0)
}

fn window_start(eng: &Engine) -> WindowStart {
    WindowStart {
        io: eng.stats,
        cpu_us: own_cpu_us(),
    }
}

/// What the engine read and this process spent during a measured window,
/// and on how many connections deflate was agreed.
fn window_io(t: &mut Tally, start: &WindowStart, now: &crate::engine::IoStats) {
    let before = &start.io;
    t.client_cpu_us = own_cpu_us().saturating_sub(start.cpu_us);
    t.wire_in = now.bytes_in - before.bytes_in;
    t.inflated = now.inflated - before.inflated;
    t.inflated_from = now.inflated_from - before.inflated_from;
    t.inflated_to = now.inflated_to - before.inflated_to;
    t.deflate_conns = now.deflate_conns;
}

/// Connection state by local index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Pending(ConnId),
    Open(ConnId),
    Gone,
}

/// The engine id of each connection that opened, by its place in `st`.
fn open_ids(st: &[St]) -> Vec<Option<ConnId>> {
    st.iter()
        .map(|s| match s {
            St::Open(id) => Some(*id),
            _ => None,
        })
        .collect()
}

/// Opens `paths.len()` connections (local index = tag), at most
/// `--concurrency` at a time, each `(global index, node, path)` to target
/// number `node` (0: `--url`, then each `--also-url`). Returns each one's
/// state.
fn connect_all(
    ctx: &Ctx,
    eng: &mut Engine,
    label: &str,
    paths: &[(u64, usize, String)],
    tally: &mut Tally,
    on_msg: &mut dyn FnMut(u32, &[u8], u64),
) -> io::Result<Vec<St>> {
    let n = paths.len();
    let mut st = vec![St::Gone; n];
    let start = now_ns();
    tally.connect_start_ns = start;
    let deadline = start + CONNECT_BUDGET;
    let (mut next, mut pending, mut open) = (0usize, 0usize, 0usize);
    let mut last_reap = start;
    let mut last_progress = 0;
    while next < n || pending > 0 {
        let now = now_ns();
        if now > deadline {
            tally.fail("connect phase over its time budget".into());
            break;
        }
        while next < n && pending < ctx.c.concurrency {
            let (g, node, path) = &paths[next];
            match eng.connect(*node, path, *g as usize, next as u32) {
                Ok(id) => {
                    st[next] = St::Pending(id);
                    pending += 1;
                }
                Err(e) => tally.fail(format!("connect: {}", e.kind())),
            }
            next += 1;
        }
        eng.poll(Duration::from_millis(5), on_msg)?;
        for note in eng.take_notes() {
            match note {
                Note::Opened {
                    id,
                    tag,
                    handshake_ns,
                } => {
                    st[tag as usize] = St::Open(id);
                    pending -= 1;
                    open += 1;
                    tally.opened += 1;
                    tally.handshake.record(handshake_ns);
                    tally.connect_end_ns = now_ns();
                }
                Note::Failed { tag, why } => {
                    match st[tag as usize] {
                        St::Pending(_) => pending -= 1,
                        St::Open(_) => open -= 1,
                        St::Gone => {}
                    }
                    st[tag as usize] = St::Gone;
                    tally.fail(why.key());
                }
                Note::Closed { tag } => st[tag as usize] = St::Gone,
            }
        }
        if now - last_reap > 500 * MS {
            eng.reap(Duration::from_secs(15));
            last_reap = now;
        }
        if now - last_progress > 200 * MS {
            last_progress = now;
            ctx.progress(&format!(
                "[{label}] connecting {open}/{n} open, {pending} in progress, {} failed",
                tally.failures.values().sum::<u64>()
            ));
        }
    }
    Ok(st)
}

/// Polls until no byte arrived for `quiet` (join events, welcomes), at
/// least `min`, at most [`SETTLE_BUDGET`].
fn settle(
    ctx: &Ctx,
    eng: &mut Engine,
    label: &str,
    min: Duration,
    quiet: Duration,
    on_msg: &mut dyn FnMut(u32, &[u8], u64),
) -> io::Result<()> {
    let start = now_ns();
    let mut last_bytes = eng.stats.bytes_in;
    let mut last_change = start;
    loop {
        let now = now_ns();
        if eng.stats.bytes_in != last_bytes {
            last_bytes = eng.stats.bytes_in;
            last_change = now;
        }
        let elapsed = now - start;
        if (elapsed >= min.as_nanos() as u64 && now - last_change >= quiet.as_nanos() as u64)
            || elapsed > SETTLE_BUDGET
        {
            return Ok(());
        }
        ctx.progress(&format!(
            "[{label}] settling {:.1}s, {} MiB received",
            elapsed as f64 / 1e9,
            eng.stats.bytes_in >> 20
        ));
        eng.poll(Duration::from_millis(20), on_msg)?;
        eng.take_notes();
    }
}

fn ignore(_: u32, _: &[u8], _: u64) {}

fn idle(ctx: &mut Ctx, eng: &mut Engine, a: &IdleArgs) -> io::Result<Tally> {
    let mut t = Tally::default();
    let paths: Vec<(u64, usize, String)> = (0..a.conns)
        .filter(|&g| ctx.mine(g))
        .map(|g| (g, 0, a.path.clone()))
        .collect();
    let mut frames = 0u64;
    let mut count = |_: u32, _: &[u8], _: u64| frames += 1;
    connect_all(ctx, eng, "idle", &paths, &mut t, &mut count)?;
    // Let the server finish what the last upgrades started before its RSS
    // is read.
    settle(
        ctx,
        eng,
        "idle",
        Duration::from_millis(500),
        Duration::from_millis(300),
        &mut count,
    )?;
    ctx.begin_window()?;
    t.run_start_ns = now_ns();
    let end = t.run_start_ns + (ctx.c.duration * 1e9) as u64;
    while now_ns() < end {
        eng.poll(Duration::from_millis(100), &mut count)?;
        for note in eng.take_notes() {
            if let Note::Failed { why, .. } = note {
                t.fail(format!("while idle: {}", why.key()));
            }
        }
        ctx.progress(&format!(
            "[idle] holding {} connections, {:.1}s left",
            eng.len(),
            end.saturating_sub(now_ns()) as f64 / 1e9
        ));
    }
    t.run_end_ns = now_ns();
    t.other_frames = frames;
    t.bytes_in = eng.stats.bytes_in;
    t.bytes_out = eng.stats.bytes_out;
    ctx.end_window(&t)?;
    Ok(t)
}

fn storm(ctx: &mut Ctx, eng: &mut Engine, a: &StormArgs) -> io::Result<Tally> {
    let target = a.target()?;
    let mut t = Tally::default();
    ctx.begin_window()?;
    let start = now_ns();
    t.run_start_ns = start;
    t.connect_start_ns = start;
    let end = start + (ctx.c.duration * 1e9) as u64;
    let hard_end = end + 5 * SEC;
    let mut in_flight = 0usize;
    let mut g = 0u64;
    let mut last_reap = start;
    let mut last_progress = 0;
    loop {
        let now = now_ns();
        if (now >= end && in_flight == 0) || now >= hard_end {
            break;
        }
        while now < end && in_flight < ctx.c.concurrency {
            match eng.connect(0, &target, g as usize, 0) {
                Ok(_) => in_flight += 1,
                Err(e) => t.fail(format!("connect: {}", e.kind())),
            }
            g += 1;
        }
        eng.poll(Duration::from_millis(2), &mut ignore)?;
        for note in eng.take_notes() {
            match note {
                Note::Opened {
                    id, handshake_ns, ..
                } => {
                    t.opened += 1;
                    t.handshake.record(handshake_ns);
                    eng.close(id, Duration::from_secs(3));
                }
                Note::Closed { .. } => {
                    t.closed += 1;
                    in_flight -= 1;
                }
                Note::Failed { why, .. } => {
                    t.fail(why.key());
                    in_flight -= 1;
                }
            }
        }
        if now - last_reap > 250 * MS {
            eng.reap(Duration::from_secs(5));
            last_reap = now;
        }
        if now - last_progress > 200 * MS {
            last_progress = now;
            let el = (now - start) as f64 / 1e9;
            ctx.progress(&format!(
                "[storm] {el:.1}s {} handshakes ({:.0}/s), {} failed",
                t.opened,
                t.opened as f64 / el.max(1e-9),
                t.failures.values().sum::<u64>()
            ));
        }
    }
    t.run_end_ns = now_ns();
    t.connect_end_ns = t.run_end_ns;
    t.bytes_in = eng.stats.bytes_in;
    t.bytes_out = eng.stats.bytes_out;
    ctx.end_window(&t)?;
    Ok(t)
}

fn echo(ctx: &mut Ctx, eng: &mut Engine, a: &EchoArgs) -> io::Result<Vec<Tally>> {
    let mut setup = Tally::default();
    let paths: Vec<(u64, usize, String)> =
        (0..a.conns).map(|g| (g, 0, "/echo".to_string())).collect();
    let st = connect_all(ctx, eng, "echo", &paths, &mut setup, &mut ignore)?;
    let ids = open_ids(&st);
    let payload = vec![b'x'; a.size];
    let mut out = Vec::new();
    for &inflight in &a.inflight {
        let mut t = Tally {
            opened: setup.opened,
            failures: setup.failures.clone(),
            connect_start_ns: setup.connect_start_ns,
            connect_end_ns: setup.connect_end_ns,
            handshake: setup.handshake.clone(),
            ..Tally::default()
        };
        // Send times of the messages in flight, per connection, in order.
        let mut sent_at: Vec<VecDeque<u64>> = vec![VecDeque::new(); ids.len()];
        let mut alive = vec![true; ids.len()];
        ctx.begin_window()?;
        let at_start = window_start(eng);
        let start = now_ns();
        t.run_start_ns = start;
        let end = start + (ctx.c.duration * 1e9) as u64;
        let hard_end = end + (ctx.c.drain * 1e9) as u64;
        let mut sent = 0u64;
        for (i, id) in ids.iter().enumerate() {
            if let Some(id) = id {
                for _ in 0..inflight {
                    sent_at[i].push_back(now_ns());
                    eng.queue(*id, OpCode::Text, &payload);
                    sent += 1;
                }
                eng.flush(*id);
            }
        }
        let mut due: Vec<u32> = Vec::new();
        let mut last_progress = 0;
        loop {
            let now = now_ns();
            let waiting: usize = sent_at.iter().map(|q| q.len()).sum();
            if (now >= end && waiting == 0) || now >= hard_end {
                break;
            }
            let mut on_msg = |tag: u32, p: &[u8], at: u64| {
                let q = &mut sent_at[tag as usize];
                if let Some(s) = q.pop_front() {
                    if p.len() == payload.len() {
                        t.delivered += 1;
                        t.latency.record(at.saturating_sub(s));
                        t.run_end_ns = at;
                    } else {
                        t.other_frames += 1;
                    }
                    if at < end {
                        due.push(tag);
                    }
                }
            };
            eng.poll(Duration::from_millis(5), &mut on_msg)?;
            for note in eng.take_notes() {
                if let Note::Failed { tag, why } = note {
                    alive[tag as usize] = false;
                    sent_at[tag as usize].clear();
                    t.fail(why.key());
                }
            }
            let mut touched: Vec<u32> = Vec::new();
            for &tag in &due {
                if let (true, Some(id)) = (alive[tag as usize], ids[tag as usize]) {
                    sent_at[tag as usize].push_back(now_ns());
                    eng.queue(id, OpCode::Text, &payload);
                    sent += 1;
                    touched.push(tag);
                }
            }
            due.clear();
            touched.sort_unstable();
            touched.dedup();
            for tag in touched {
                if let Some(id) = ids[tag as usize] {
                    eng.flush(id);
                }
            }
            if now - last_progress > 200 * MS {
                last_progress = now;
                let el = (now - start) as f64 / 1e9;
                ctx.progress(&format!(
                    "[echo x{inflight}] {el:.1}s {} messages ({:.0}/s)",
                    t.delivered,
                    t.delivered as f64 / el.max(1e-9)
                ));
            }
        }
        t.sent_per_group = vec![sent];
        if t.run_end_ns == 0 {
            t.run_end_ns = now_ns();
        }
        t.bytes_in = eng.stats.bytes_in;
        t.bytes_out = eng.stats.bytes_out;
        window_io(&mut t, &at_start, &eng.stats);
        ctx.end_window(&t)?;
        out.push(t);
    }
    Ok(out)
}

/// A chat scenario: who connects where, who sends, who expects what.
pub struct Chat {
    label: &'static str,
    /// Global connection count.
    conns: u64,
    /// Messages per second per sender.
    rate: f64,
    size: usize,
    text: Text,
    /// Path of global connection `g`.
    path: Box<dyn Fn(u64) -> String>,
    /// Node (0: `--url`, then each `--also-url`) of global connection `g`.
    node: Box<dyn Fn(u64) -> usize>,
    /// Group (room) of global connection `g`.
    group: Box<dyn Fn(u64) -> u64>,
    groups: u64,
    /// Whether global connection `g` sends.
    sends: Box<dyn Fn(u64) -> bool>,
    /// Messages each receiver should get per message a sender sends,
    /// i.e. senders in its group.
    senders_per_group: u64,
    json_events: bool,
    /// Wait up to `--drain` for late messages even when nothing arrived
    /// for a second (hostile: a stalled server delivers late, not never).
    patient: bool,
}

impl Chat {
    pub fn fanout(a: &FanoutArgs, nonce: u32) -> Chat {
        let global = a.global;
        let nodes = 1 + a.common.also_url.len();
        Chat {
            label: "fanout",
            conns: a.conns,
            rate: a.rate,
            size: a.size,
            text: a.text,
            path: Box::new(move |g| {
                if global {
                    "/ws".to_string()
                } else {
                    format!("/ws/lt{nonce:08x}-fan/c{g}")
                }
            }),
            // Connection 0, the sender, is on `--url`; the receivers after
            // it take the nodes in turn.
            node: Box::new(move |g| (g % nodes as u64) as usize),
            group: Box::new(|_| 0),
            groups: 1,
            sends: Box::new(|g| g == 0),
            senders_per_group: 1,
            json_events: !global && !a.common.raw,
            patient: false,
        }
    }

    pub fn rooms(a: &RoomsArgs, nonce: u32) -> Chat {
        let per = a.per_room.max(1);
        let senders = a.senders.unwrap_or(per).clamp(1, per);
        let nodes = 1 + a.common.also_url.len() as u64;
        Chat {
            label: "rooms",
            conns: a.rooms * per,
            rate: a.rate,
            size: a.size,
            text: a.text,
            path: Box::new(move |g| format!("/ws/lt{nonce:08x}-r{}/c{g}", g / per)),
            // Each room's members take the nodes in turn.
            node: Box::new(move |g| (g % per % nodes) as usize),
            group: Box::new(move |g| g / per),
            groups: a.rooms,
            sends: Box::new(move |g| g % per < senders),
            senders_per_group: senders,
            json_events: !a.common.raw,
            patient: false,
        }
    }
}

impl Chat {
    /// Bystanders in one room, each sending in turn, while an attacker
    /// does its worst elsewhere on the same server.
    pub fn hostile(a: &HostileArgs, nonce: u32) -> Chat {
        let n = a.bystanders.max(2);
        Chat {
            label: "hostile",
            conns: n,
            rate: a.rate / n as f64,
            size: a.size,
            text: Text::X,
            path: Box::new(move |g| format!("/ws/lt{nonce:08x}-calm/c{g}")),
            node: Box::new(|_| 0),
            group: Box::new(|_| 0),
            groups: 1,
            sends: Box::new(|_| true),
            senders_per_group: n,
            json_events: !a.common.raw,
            patient: true,
        }
    }
}

/// What a receiver found in a frame.
struct Marker {
    nonce: u32,
    sent_ns: u64,
}

/// Parses `~NONCE:SENT_NS:SENDER:SEQ~` out of a frame.
fn find_marker(p: &[u8]) -> Option<Marker> {
    let start = p.iter().position(|&b| b == b'~')? + 1;
    let rest = &p[start..];
    let end = rest.iter().position(|&b| b == b'~')?;
    let mut fields = rest[..end].split(|&b| b == b':');
    let hex = fields.next()?;
    let nonce = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    let sent_ns = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    Some(Marker { nonce, sent_ns })
}

/// Writes a message of `size` bytes (or the marker alone if longer), filled
/// as `text` says.
fn write_message(
    buf: &mut Vec<u8>,
    text: Text,
    (nonce, sent_ns, sender, seq): (u32, u64, u64, u64),
    size: usize,
) {
    use std::io::Write;
    buf.clear();
    let _ = write!(buf, "~{nonce:08x}:{sent_ns}:{sender}:{seq}~");
    match text {
        Text::X => {
            if buf.len() < size {
                buf.resize(size, b'x');
            }
        }
        Text::Chat => {
            // xorshift64, seeded per (sender, seq); never zero.
            let mut x = (seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ sender.rotate_left(32)) | 1;
            while buf.len() < size {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(b' ');
                buf.extend_from_slice(WORDS[(x >> 56) as usize].as_bytes());
            }
            // Never into the marker (it has no space).
            let marker = buf.iter().position(|&b| b == b' ').unwrap_or(buf.len());
            buf.truncate(size.max(marker));
            // Servers trim content: a trailing space would not come back.
            if let Some(last) = buf.last_mut().filter(|b| **b == b' ') {
                *last = b'.';
            }
        }
    }
}

/// The vocabulary of `--text chat`: 256 common English words (no `~`, nothing
/// JSON escapes), one byte of randomness per word.
#[rustfmt::skip] // one word a line would be 256 lines
pub const WORDS: [&str; 256] = [
    "the", "be", "to", "of", "and", "a", "in", "that", "have", "I", "it", "for", "not", "on",
    "with", "he", "as", "you", "do", "at", "this", "but", "his", "by", "from", "they", "we", "say",
    "her", "she", "or", "an", "will", "my", "one", "all", "would", "there", "their", "what", "so",
    "up", "out", "if", "about", "who", "get", "which", "go", "me", "when", "make", "can", "like",
    "time", "no", "just", "him", "know", "take", "people", "into", "year", "your", "good", "some",
    "could", "them", "see", "other", "than", "then", "now", "look", "only", "come", "its", "over",
    "think", "also", "back", "after", "use", "two", "how", "our", "work", "first", "well", "way",
    "even", "new", "want", "because", "any", "these", "give", "day", "most", "us", "is", "was",
    "are", "been", "has", "had", "were", "said", "did", "going", "really", "yeah", "ok", "thanks",
    "sure", "maybe", "tomorrow", "today", "meeting", "lunch", "coffee", "build", "deploy", "server",
    "client", "message", "room", "test", "bug", "fix", "release", "branch", "merge", "review",
    "change", "config", "error", "log", "issue", "ticket", "call", "later", "soon", "again",
    "still", "never", "always", "here", "where", "why", "right", "left", "long", "short", "great",
    "little", "old", "big", "high", "different", "small", "large", "next", "early", "young",
    "important", "few", "public", "bad", "same", "able", "last", "late", "hard", "major", "better",
    "best", "free", "true", "whole", "clear", "problem", "week", "company", "system", "program",
    "question", "number", "night", "point", "home", "water", "money", "story", "fact", "month",
    "lot", "study", "book", "eye", "job", "word", "business", "side", "kind", "head", "house",
    "service", "friend", "power", "hour", "game", "line", "end", "member", "car", "city", "name",
    "team", "minute", "idea", "body", "words", "nothing", "ago", "lead", "social", "understand",
    "whether", "watch", "together", "follow", "around", "parent", "stop", "face", "anything",
    "create", "read", "allow", "add", "spend", "grow", "open", "walk", "win", "offer", "remember",
    "love", "consider", "buy", "wait", "serve", "send", "expect", "stay",
];

/// What the receivers of a chat scenario count.
struct Receivers {
    nonce: u32,
    json_events: bool,
    /// Messages of this run received, per local connection.
    got: Vec<u64>,
    other: u64,
    welcomes: u64,
    last_at: u64,
    lat: crate::report::Hist,
    /// Node of each local connection, and latency at each node's receivers
    /// (empty with a single node).
    node_of: Vec<usize>,
    lat_by_node: Vec<crate::report::Hist>,
    /// Our messages that did not arrive inside a JSON event.
    bad_shape: u64,
}

impl Receivers {
    fn on(&mut self, tag: u32, p: &[u8], at: u64) {
        match find_marker(p) {
            Some(m) if m.nonce == self.nonce => {
                if self.json_events && !p.starts_with(b"{") {
                    self.bad_shape += 1;
                }
                self.got[tag as usize] += 1;
                self.lat.record(at.saturating_sub(m.sent_ns));
                if let Some(h) = self.lat_by_node.get_mut(self.node_of[tag as usize]) {
                    h.record(at.saturating_sub(m.sent_ns));
                }
                self.last_at = at;
            }
            _ => {
                self.other += 1;
                if p[..p.len().min(48)].windows(9).any(|w| w == b"\"welcome\"") {
                    self.welcomes += 1;
                }
            }
        }
    }
}

fn chat(
    ctx: &mut Ctx,
    eng: &mut Engine,
    s: &Chat,
    hooks: &mut dyn WindowHooks,
) -> io::Result<Tally> {
    let label = s.label;
    let mut t = Tally {
        sent_per_group: vec![0; s.groups as usize],
        ..Tally::default()
    };
    let globals: Vec<u64> = (0..s.conns).filter(|&g| ctx.mine(g)).collect();
    let paths: Vec<(u64, usize, String)> = globals
        .iter()
        .map(|&g| (g, (s.node)(g), (s.path)(g)))
        .collect();
    let nonce = ctx.nonce;

    let mut rx = Receivers {
        nonce,
        json_events: s.json_events,
        got: vec![0; globals.len()],
        other: 0,
        welcomes: 0,
        last_at: 0,
        lat: crate::report::Hist::default(),
        node_of: paths.iter().map(|p| p.1).collect(),
        lat_by_node: match ctx.c.also_url.len() {
            0 => Vec::new(),
            n => vec![crate::report::Hist::default(); n + 1],
        },
        bad_shape: 0,
    };
    let st = connect_all(ctx, eng, label, &paths, &mut t, &mut |a, b, c| {
        rx.on(a, b, c)
    })?;
    settle(
        ctx,
        eng,
        label,
        Duration::from_millis(300),
        Duration::from_millis(300),
        &mut |a, b, c| rx.on(a, b, c),
    )?;
    let ids = open_ids(&st);
    // Senders, and the schedule: message k at start + k / total_rate.
    let senders: Vec<usize> = (0..globals.len())
        .filter(|&i| (s.sends)(globals[i]))
        .collect();
    let per_sender = (s.rate * ctx.c.duration).floor() as u64;
    let total = senders.len() as u64 * per_sender;
    let total_rate = senders.len() as f64 * s.rate;
    // Every sender sends exactly `per_sender`, so each receiver expects
    // `senders_per_group * per_sender`, whichever shard its senders are in.
    let expected_each = s.senders_per_group * per_sender;
    hooks.start();
    ctx.begin_window()?;
    let at_start = window_start(eng);
    let start = now_ns() + MS;
    t.run_start_ns = start;
    let send_end = start + (ctx.c.duration * 1e9) as u64;
    let hard_end = send_end + (ctx.c.drain * 1e9) as u64 + 5 * SEC;
    let mut k = 0u64;
    let mut buf = Vec::with_capacity(s.size + 64);
    let mut last_progress = 0;
    let mut alive = ids.iter().filter(|i| i.is_some()).count() as u64;
    let mut done_sending_at: Option<u64> = None;
    let mut last_delivered = 0u64;
    let mut last_delivery_change = start;
    loop {
        let now = now_ns();
        // Send what is due.
        while k < total {
            let due = start + (k as f64 * 1e9 / total_rate) as u64;
            if due > now {
                break;
            }
            let i = senders[(k % senders.len() as u64) as usize];
            let seq = k / senders.len() as u64;
            let at = now_ns();
            t.max_send_lag_ns = t.max_send_lag_ns.max(at.saturating_sub(due));
            if let Some(id) = ids[i] {
                write_message(&mut buf, s.text, (nonce, at, globals[i], seq), s.size);
                eng.send_text(id, &buf);
                t.sent_per_group[(s.group)(globals[i]) as usize] += 1;
            }
            k += 1;
        }
        if k >= total && done_sending_at.is_none() {
            done_sending_at = Some(now);
        }
        let delivered: u64 = rx.got.iter().sum();
        if delivered != last_delivered {
            last_delivered = delivered;
            last_delivery_change = now;
        }
        if let Some(done) = done_sending_at {
            let complete = rx.got.iter().all(|&g| g >= expected_each);
            let quiet = !s.patient && now - last_delivery_change > SEC && now - done > SEC;
            if complete || quiet || now - done > (ctx.c.drain * 1e9) as u64 || now >= hard_end {
                break;
            }
        } else if now >= hard_end {
            t.fail("send schedule over its time budget".into());
            break;
        }
        let wait = if k < total {
            let due = start + (k as f64 * 1e9 / total_rate) as u64;
            Duration::from_nanos(due.saturating_sub(now).min(20 * MS))
        } else {
            Duration::from_millis(20)
        };
        eng.poll(wait, &mut |a, b, c| rx.on(a, b, c))?;
        hooks.tick();
        for note in eng.take_notes() {
            if let Note::Failed { why, .. } = note {
                alive -= 1;
                t.fail(format!("during run: {}", why.key()));
            }
        }
        if now - last_progress > 250 * MS {
            last_progress = now;
            let el = now.saturating_sub(start) as f64 / 1e9;
            ctx.progress(&format!(
                "[{label}] {el:.1}s sent {k}/{total}, delivered {delivered} ({:.0}/s), {alive} open",
                delivered as f64 / el.max(1e-9)
            ));
        }
    }
    hooks.stop(&mut t);
    t.run_end_ns = rx.last_at.max(done_sending_at.unwrap_or(start));
    t.delivered = rx.got.iter().sum();
    t.receivers = globals
        .iter()
        .zip(&rx.got)
        .map(|(&g, &n)| [g, (s.group)(g), n])
        .collect();
    t.latency = rx.lat;
    t.latency_by_node = rx.lat_by_node;
    t.other_frames = rx.other;
    t.welcomes = rx.welcomes;
    let bad_shape = rx.bad_shape;
    t.bytes_in = eng.stats.bytes_in;
    t.bytes_out = eng.stats.bytes_out;
    window_io(&mut t, &at_start, &eng.stats);
    if bad_shape > 0 {
        t.fail(format!("{bad_shape} messages not JSON events (use --raw?)"));
    }
    ctx.end_window(&t)?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trips_raw_and_inside_json() {
        let mut buf = Vec::new();
        write_message(&mut buf, Text::X, (0xabc, 123_456_789, 7, 42), 64);
        assert_eq!(buf.len(), 64);
        let m = find_marker(&buf).unwrap();
        assert_eq!((m.nonce, m.sent_ns), (0xabc, 123_456_789));
        let json = format!(
            r#"{{"type":"message","id":3,"room_id":"r","client_id":"c0","content":"{}","timestamp":"x"}}"#,
            std::str::from_utf8(&buf).unwrap()
        );
        let m = find_marker(json.as_bytes()).unwrap();
        assert_eq!(m.sent_ns, 123_456_789);
        assert!(find_marker(br#"{"type":"join","client_id":"c1"}"#).is_none());
    }

    #[test]
    fn chat_text_is_exact_deterministic_and_survives_trimming() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for size in [0, 10, 30, 31, 64, 100, 257, 512, 4000] {
            for seq in 0..20 {
                write_message(&mut a, Text::Chat, (7, 99, 3, seq), size);
                let marker = a.iter().position(|&b| b == b' ').unwrap_or(a.len());
                assert_eq!(a.len(), size.max(marker), "size {size}");
                assert_ne!(a.last(), Some(&b' '));
                assert!(a.iter().all(|&c| c.is_ascii_graphic() || c == b' '));
                assert_eq!(
                    find_marker(&a).map(|m| m.sent_ns),
                    Some(99),
                    "{}",
                    String::from_utf8_lossy(&a)
                );
                // The same words for the same sender and sequence number.
                write_message(&mut b, Text::Chat, (7, 42, 3, seq), size);
                assert_eq!(a[marker..], b[marker..]);
            }
        }
        write_message(&mut a, Text::Chat, (7, 99, 3, 1), 200);
        write_message(&mut b, Text::Chat, (7, 99, 3, 2), 200);
        assert_ne!(a[30..], b[30..]);
        let distinct: std::collections::BTreeSet<&str> = WORDS.iter().copied().collect();
        assert_eq!(distinct.len(), WORDS.len());
    }

    #[test]
    fn chat_text_compresses_like_english() {
        // Public-domain English prose, for scale.
        const PROSE: &str = "When in the Course of human events, it becomes necessary for \
one people to dissolve the political bands which have connected them with another, and to \
assume among the powers of the earth, the separate and equal station to which the Laws of \
Nature and of Nature's God entitle them, a decent respect to the opinions of mankind requires \
that they should declare the causes which impel them to the separation. We hold these truths \
to be self-evident, that all men are created equal, that they are endowed by their Creator \
with certain unalienable Rights, that among these are Life, Liberty and the pursuit of \
Happiness.";
        let event = |content: &[u8]| {
            format!(
                r#"{{"type":"message","id":123,"room_id":"lt0000abcd-fan","client_id":"c0","content":"{}","timestamp":"2026-11-21T10:00:00.123456Z"}}"#,
                std::str::from_utf8(content).unwrap()
            )
        };
        // Compressed size over plain size of the room event, as Wisp sends it.
        let ratio = |content: &[u8]| {
            let e = event(content);
            let mut out = Vec::new();
            let mut z = wisp::protocol::deflate::Deflater::new(2);
            assert!(z.compress(e.as_bytes(), &mut out));
            out.len() as f64 / e.len() as f64
        };
        let mut buf = Vec::new();
        for size in [256, 512] {
            write_message(&mut buf, Text::Chat, (0xabc, 123_456_789_012, 0, 5), size);
            let chat = ratio(&buf);
            let prose = ratio(&PROSE.as_bytes()[..size]);
            write_message(&mut buf, Text::X, (0xabc, 123_456_789_012, 0, 5), size);
            let x = ratio(&buf);
            assert!(
                (chat - prose).abs() < 0.08,
                "{size}: chat {chat:.2} prose {prose:.2}"
            );
            assert!(x < chat - 0.25, "{size}: x {x:.2} chat {chat:.2}");
        }
    }

    fn parse(args: &[&str]) -> Cmd {
        use clap::Parser;
        crate::Cli::try_parse_from(std::iter::once("wisp-loadtest").chain(args.iter().copied()))
            .unwrap()
            .cmd
    }

    #[test]
    fn also_url_spreads_receivers_round_robin_sender_on_url() {
        let Cmd::Fanout(a) = parse(&["fanout", "-n", "6", "--also-url", "ws://127.0.0.1:9"]) else {
            panic!("not fanout");
        };
        let c = Chat::fanout(&a, 1);
        assert!((c.sends)(0));
        let nodes: Vec<usize> = (0..6).map(|g| (c.node)(g)).collect();
        assert_eq!(nodes, [0, 1, 0, 1, 0, 1]);
        assert_eq!(a.common.targets().unwrap().len(), 2);

        let Cmd::Fanout(one) = parse(&["fanout", "-n", "3"]) else {
            panic!("not fanout");
        };
        let c = Chat::fanout(&one, 1);
        assert!((0..3).all(|g| (c.node)(g) == 0));

        let Cmd::Rooms(r) = parse(&[
            "rooms",
            "--rooms",
            "2",
            "--per-room",
            "3",
            "--also-url",
            "ws://127.0.0.1:9",
            "--also-url",
            "ws://127.0.0.1:10",
        ]) else {
            panic!("not rooms");
        };
        let c = Chat::rooms(&r, 1);
        let nodes: Vec<(u64, usize)> = (0..6).map(|g| ((c.group)(g), (c.node)(g))).collect();
        assert_eq!(nodes, [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]);
    }

    #[test]
    fn senders_are_the_first_of_each_room() {
        let Cmd::Rooms(r) = parse(&["rooms", "--rooms", "3", "--per-room", "4", "--senders", "1"])
        else {
            panic!("not rooms");
        };
        let c = Chat::rooms(&r, 1);
        let sends: Vec<u64> = (0..12).filter(|&g| (c.sends)(g)).collect();
        assert_eq!(sends, [0, 4, 8]);
        assert_eq!(c.senders_per_group, 1);

        let Cmd::Rooms(all) = parse(&["rooms", "--rooms", "2", "--per-room", "2"]) else {
            panic!("not rooms");
        };
        let c = Chat::rooms(&all, 1);
        assert!((0..4).all(|g| (c.sends)(g)));
        assert_eq!(c.senders_per_group, 2);
    }
}
