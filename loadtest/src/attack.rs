//! One hostile client for the `hostile` scenario: it runs on its own thread
//! with blocking sockets from its own loopback addresses (127.0.0.X and up,
//! apart from the bystanders' `--sources`), while the bystanders chat on the
//! engine's loop and measure latency.
//!
//! Each kind reproduces one attack of the hardening issue: it sets up what it
//! needs (a full history, a big room), then attacks until told to stop,
//! reconnecting as a real attacker would when the server closes it. Every
//! loop checks the stop flag at least every 100 ms (write timeouts) or 5 s
//! (connect, upgrade), and every count is bounded.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
use wisp::protocol::client::{check_response, encode_masked, request, MaskRng};
use wisp::protocol::{Decoded, OpCode};

use crate::report::Tally;
use crate::scenarios::WindowHooks;
use crate::sys::{now_ns, rss_bytes};

/// The attacks (the hardening issue's reproductions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `GET / HTTP/1.1` pipelined without end, never reading the answers.
    PipelinedGet,
    /// Empty pings without end on `/echo`, never reading the pongs.
    PingFlood,
    /// 1-byte messages into a room, far over the rate limit, never reading.
    MessageFlood,
    /// Fills the global history with control characters, then pipelines
    /// `GET /messages` without reading.
    HistoryGet,
    /// Posts 99 messages of 65,000 bytes into a room, then joins it over and
    /// over without reading the welcome (32 such joiners open at a time).
    BigWelcome,
    /// A new room per connection, 100 messages of 65,000 control
    /// characters each, from one address after another.
    Fill,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::PipelinedGet => "pipelined-get",
            Kind::PingFlood => "ping-flood",
            Kind::MessageFlood => "message-flood",
            Kind::HistoryGet => "history-get",
            Kind::BigWelcome => "big-welcome",
            Kind::Fill => "fill",
        }
    }

    /// What one unit of the attack is, for the report.
    fn unit(self) -> &'static str {
        match self {
            Kind::PipelinedGet | Kind::HistoryGet => "request",
            Kind::PingFlood => "ping",
            Kind::MessageFlood | Kind::Fill => "message",
            Kind::BigWelcome => "join",
        }
    }
}

/// What the attacker did and what it ran into.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct AttackReport {
    pub kind: String,
    pub unit: String,
    /// Seconds spent preparing (filling a history, posting a big room)
    /// before the measured window.
    pub setup_s: f64,
    pub connections: u64,
    pub bytes_sent: u64,
    pub units_sent: u64,
    /// Times the server closed or reset an attacking connection.
    pub closed_by_server: u64,
    /// Seconds the attacker's writes were blocked (the server not reading).
    pub blocked_s: f64,
    /// Stopped early because the server's RSS passed `--rss-cap-mib`.
    pub stopped_for_rss: bool,
    /// Errors by kind (connect failures, refused upgrades).
    pub errors: BTreeMap<String, u64>,
}

impl AttackReport {
    /// Setup is over: what it sent is not part of the attack.
    fn end_setup(&mut self, started: Instant) {
        self.setup_s = started.elapsed().as_secs_f64();
        self.connections = 0;
        self.bytes_sent = 0;
        self.units_sent = 0;
        self.closed_by_server = 0;
    }

    fn error(&mut self, what: String) {
        *self.errors.entry(what).or_default() += 1;
    }

    /// One line for the report table.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{}: {} {}s, {:.1} MiB over {} connections; {} closed by the server; writes blocked {:.1} s",
            self.kind,
            self.units_sent,
            self.unit,
            self.bytes_sent as f64 / (1024.0 * 1024.0),
            self.connections,
            self.closed_by_server,
            self.blocked_s
        );
        if self.setup_s > 0.0 {
            s.push_str(&format!("; setup {:.1} s", self.setup_s));
        }
        if self.stopped_for_rss {
            s.push_str("; STOPPED: server RSS over the cap");
        }
        for (k, v) in &self.errors {
            s.push_str(&format!("; {k}: {v}"));
        }
        s
    }
}

/// Most connections one attack opens (reconnects included).
const MAX_CONNECTIONS: u64 = 20_000;
/// Joiners of `big-welcome` kept open (not reading) at a time.
const OPEN_JOINERS: usize = 32;
/// Source addresses `fill` and `history-get` rotate through.
const ADDRESSES: u8 = 50;

struct Shared {
    stop: AtomicBool,
}

/// Where and how to attack.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The first source address is 127.0.0.`first_source`.
    pub first_source: u8,
    /// Room names are prefixed with this (unique per run).
    pub room: String,
}

impl Target {
    fn source(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, 0, self.first_source.saturating_add(i).max(2))
    }

    fn connect(&self, source: u8, recv_buffer: Option<usize>) -> io::Result<TcpStream> {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        if let Some(n) = recv_buffer {
            sock.set_recv_buffer_size(n)?;
        }
        sock.bind(&SocketAddr::V4(SocketAddrV4::new(self.source(source), 0)).into())?;
        sock.connect_timeout(&self.addr.into(), Duration::from_secs(5))?;
        let s: TcpStream = sock.into();
        s.set_nodelay(true)?;
        s.set_write_timeout(Some(Duration::from_millis(100)))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(s)
    }

    /// A connection upgraded to `path`; the bytes after the 101 are dropped.
    fn upgrade(&self, source: u8, recv_buffer: Option<usize>, path: &str) -> io::Result<TcpStream> {
        let mut s = self.connect(source, recv_buffer)?;
        let key = MaskRng::from_os().key();
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(&request(&self.addr.to_string(), path, &key))?;
        s.set_write_timeout(Some(Duration::from_millis(100)))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match check_response(&buf, &key) {
                Ok(Decoded::Done(_)) => return Ok(s),
                Ok(Decoded::NeedMore) => {}
                Err(e) => return Err(io::Error::other(format!("upgrade refused: {e:?}"))),
            }
            match s.read(&mut chunk)? {
                0 => return Err(io::Error::other("EOF during the upgrade")),
                n => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// A running attack.
pub struct Attack {
    shared: Arc<Shared>,
    thread: Option<thread::JoinHandle<AttackReport>>,
}

impl Attack {
    /// Starts the attack thread and waits (at most 120 s) until its setup is
    /// done and it is attacking.
    pub fn start(kind: Kind, target: Target) -> Attack {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || run(kind, &target, &shared, ready_tx))
        };
        let _ = ready_rx.recv_timeout(Duration::from_secs(120));
        Attack {
            shared,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self, for_rss: bool) -> AttackReport {
        self.shared.stop.store(true, Ordering::Relaxed);
        let mut r = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        r.stopped_for_rss |= for_rss;
        r
    }

    fn signal_stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn masked(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_masked(&mut out, opcode, payload, MaskRng::from_os().mask());
    out
}

/// `unit` repeated to about 64 KiB, whole units only.
fn chunk_of(unit: &[u8]) -> Vec<u8> {
    unit.repeat((64 * 1024 / unit.len()).max(1))
}

fn run(kind: Kind, t: &Target, sh: &Shared, ready: mpsc::Sender<()>) -> AttackReport {
    let mut r = AttackReport {
        kind: kind.name().into(),
        unit: kind.unit().into(),
        ..AttackReport::default()
    };
    let setup = Instant::now();
    match kind {
        Kind::PipelinedGet => {
            let _ = ready.send(());
            let req = b"GET / HTTP/1.1\r\n\r\n";
            flood(sh, &mut r, &chunk_of(req), req.len(), || {
                t.connect(0, Some(4096))
            });
        }
        Kind::PingFlood => {
            let _ = ready.send(());
            let ping = masked(OpCode::Ping, b"");
            flood(sh, &mut r, &chunk_of(&ping), ping.len(), || {
                t.upgrade(0, Some(4096), "/echo")
            });
        }
        Kind::MessageFlood => {
            let _ = ready.send(());
            let msg = masked(OpCode::Text, b"x");
            let path = format!("/ws/{}-flood/mallory", t.room);
            flood(sh, &mut r, &chunk_of(&msg), msg.len(), || {
                t.upgrade(0, Some(4096), &path)
            });
        }
        Kind::HistoryGet => {
            // 4 addresses x 3 connections x 80 messages: under the default
            // limits (100/60 per connection, 300/60 per address).
            let frame = masked(OpCode::Text, "\u{1}".repeat(16_000).as_bytes());
            'fill: for a in 1..=4u8 {
                for _ in 0..3 {
                    if sh.stop.load(Ordering::Relaxed) {
                        break 'fill;
                    }
                    post_many(sh, &mut r, t, a, "/ws", &frame, 80);
                }
            }
            r.end_setup(setup);
            let _ = ready.send(());
            let req = b"GET /messages HTTP/1.1\r\nHost: t\r\n\r\n";
            flood(sh, &mut r, &chunk_of(req), req.len(), || {
                t.connect(0, Some(4096))
            });
        }
        Kind::BigWelcome => {
            let room = format!("{}-big", t.room);
            let big = masked(OpCode::Text, "x".repeat(65_000).as_bytes());
            post_many(sh, &mut r, t, 1, &format!("/ws/{room}/poster"), &big, 99);
            r.end_setup(setup);
            let _ = ready.send(());
            let mut open: VecDeque<TcpStream> = VecDeque::new();
            while !sh.stop.load(Ordering::Relaxed) && r.connections < MAX_CONNECTIONS {
                let path = format!("/ws/{room}/j{}", r.connections);
                r.connections += 1;
                match t.upgrade(0, Some(4096), &path) {
                    Ok(s) => {
                        r.units_sent += 1;
                        open.push_back(s);
                        if open.len() > OPEN_JOINERS {
                            open.pop_front();
                        }
                    }
                    Err(e) => {
                        r.error(format!("join: {e}"));
                        thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }
        Kind::Fill => {
            let _ = ready.send(());
            let frame = masked(OpCode::Text, "\u{1}".repeat(65_000).as_bytes());
            let mut room = 0u64;
            while !sh.stop.load(Ordering::Relaxed) && r.connections < MAX_CONNECTIONS {
                // Three rooms per address: 300 messages, the per-address
                // limit; then the next address.
                let a = ((room / 3) % u64::from(ADDRESSES)) as u8;
                let path = format!("/ws/{}-fill-{room}/filler", t.room);
                post_many(sh, &mut r, t, a, &path, &frame, 100);
                room += 1;
            }
        }
    }
    r
}

/// Writes `chunk` over and over on connections from `open`, never reading,
/// reconnecting when the server closes one, until stopped.
fn flood(
    sh: &Shared,
    r: &mut AttackReport,
    chunk: &[u8],
    unit_len: usize,
    mut open: impl FnMut() -> io::Result<TcpStream>,
) {
    let mut bytes = 0u64;
    while !sh.stop.load(Ordering::Relaxed) && r.connections < MAX_CONNECTIONS {
        let mut s = match open() {
            Ok(s) => s,
            Err(e) => {
                r.error(format!("connect: {e}"));
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        r.connections += 1;
        let mut pos = 0;
        let mut blocked_since: Option<u64> = None;
        loop {
            if sh.stop.load(Ordering::Relaxed) {
                break;
            }
            match s.write(&chunk[pos..]) {
                Ok(0) => {
                    r.closed_by_server += 1;
                    break;
                }
                Ok(n) => {
                    bytes += n as u64;
                    pos = (pos + n) % chunk.len();
                    if let Some(b) = blocked_since.take() {
                        r.blocked_s += (now_ns() - b) as f64 / 1e9;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    blocked_since.get_or_insert(now_ns());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    r.closed_by_server += 1;
                    break;
                }
            }
        }
        if let Some(b) = blocked_since {
            r.blocked_s += (now_ns() - b) as f64 / 1e9;
        }
    }
    r.bytes_sent += bytes;
    r.units_sent += bytes / unit_len as u64;
}

/// Over one connection from source `a` to `path`: writes `frame` `n` times
/// while a helper thread reads (and drops) what the server sends, then
/// closes. Stops early when told to.
fn post_many(
    sh: &Shared,
    r: &mut AttackReport,
    t: &Target,
    a: u8,
    path: &str,
    frame: &[u8],
    n: usize,
) {
    let s = match t.upgrade(a, None, path) {
        Ok(s) => s,
        Err(e) => {
            r.error(format!("connect: {e}"));
            thread::sleep(Duration::from_millis(100));
            return;
        }
    };
    r.connections += 1;
    let mut reader = match s.try_clone() {
        Ok(c) => c,
        Err(e) => {
            r.error(format!("clone: {e}"));
            return;
        }
    };
    // Reads until EOF, an error, or 5 s of silence.
    let draining = thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    });
    let mut s = s;
    let mut closed = false;
    for _ in 0..n {
        if sh.stop.load(Ordering::Relaxed) {
            break;
        }
        match write_all(sh, &mut s, frame) {
            Ok(()) => {
                r.bytes_sent += frame.len() as u64;
                r.units_sent += 1;
            }
            Err(_) => {
                r.closed_by_server += 1;
                closed = true;
                break;
            }
        }
    }
    if sh.stop.load(Ordering::Relaxed) {
        // Do not wait for the server's answer: the reader ends at once.
        let _ = s.shutdown(std::net::Shutdown::Both);
    } else if !closed {
        let _ = write_all(sh, &mut s, &masked(OpCode::Close, &1000u16.to_be_bytes()));
    }
    let _ = draining.join();
}

/// `write_all` over a socket with a short write timeout, giving up when
/// stopped.
fn write_all(sh: &Shared, s: &mut TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        if sh.stop.load(Ordering::Relaxed) {
            return Err(io::Error::other("stopped"));
        }
        match s.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The `hostile` scenario's side of the chat window: the attack and the
/// server's peak RSS.
pub struct HostileHooks {
    kind: Kind,
    target: Target,
    pid: Option<u32>,
    rss_cap: u64,
    attack: Option<Attack>,
    peak: u64,
    last_sample_ns: u64,
    over_cap: bool,
}

impl HostileHooks {
    pub fn new(kind: Kind, target: Target, pid: Option<u32>, rss_cap_mib: u64) -> HostileHooks {
        HostileHooks {
            kind,
            target,
            pid,
            rss_cap: rss_cap_mib << 20,
            attack: None,
            peak: 0,
            last_sample_ns: 0,
            over_cap: false,
        }
    }

    fn sample(&mut self) {
        let Some(pid) = self.pid else { return };
        let Ok(rss) = rss_bytes(pid) else { return };
        self.peak = self.peak.max(rss);
        if rss > self.rss_cap && !self.over_cap {
            self.over_cap = true;
            if let Some(a) = &self.attack {
                a.signal_stop();
            }
        }
    }
}

impl WindowHooks for HostileHooks {
    fn start(&mut self) {
        self.sample();
        self.attack = Some(Attack::start(self.kind, self.target.clone()));
    }

    fn tick(&mut self) {
        let now = now_ns();
        if now - self.last_sample_ns >= 50_000_000 {
            self.last_sample_ns = now;
            self.sample();
        }
    }

    fn stop(&mut self, t: &mut Tally) {
        self.sample();
        let report = self.attack.take().map(|a| a.stop(self.over_cap));
        self.sample();
        t.rss_peak = (self.peak > 0).then_some(self.peak);
        t.attack = report;
    }
}
