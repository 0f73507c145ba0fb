//! Attacks on one daemon by one hostile client (issue: hardening against
//! hostile clients), each named for the failure it reproduces.
//!
//! Every attack test runs the attacker on its own thread (from its own
//! loopback address, 127.0.0.x with x >= 2, so per-address limits never mix
//! it with the bystanders on 127.0.0.1) while the test thread plays the
//! bystanders: every 200 ms a `/healthz` on a fresh connection and a room
//! round trip between two clients, each within [`PROMPT`], ids consecutive.
//! An [`RssWatch`] samples the daemon's RSS and kills it past [`KILL_CAP_KIB`]
//! so an unbounded daemon fails the test instead of taking the machine down.
//! After the attack the daemon must still be alive and serve.
//!
//! The small fixes that came with the hardening have one test each at the end.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use wisp::protocol::client::{encode_masked, MaskRng};
use wisp::protocol::OpCode;

/// What a bystander waits at most for `/healthz` or a room round trip while
/// an attack runs.
const PROMPT: Duration = Duration::from_secs(1);

/// Past this RSS the daemon is killed (and the test fails): far above every
/// bound asserted here, far below what would hurt the machine.
const KILL_CAP_KIB: u64 = 1024 * 1024;

/// Room round trips one [`Watch`] makes at most: Alice and Bob take turns,
/// so each stays under the default per-connection limit (100/60) and both
/// under the per-address one (300/60) whatever the test's length.
const MAX_CHATS: u32 = 120;

const MIB: u64 = 1024 * 1024;

/// The bystanders of one test and the worst they saw.
struct Watch<'a> {
    server: &'a Server,
    chat: Bystanders,
    worst_health: Duration,
    worst_chat: Duration,
    rounds: u32,
    chats: u32,
}

impl<'a> Watch<'a> {
    fn join(server: &'a Server) -> Watch<'a> {
        let mut chat = Bystanders::join(server, "bystanders");
        chat.check();
        Watch {
            server,
            chat,
            worst_health: Duration::ZERO,
            worst_chat: Duration::ZERO,
            rounds: 0,
            chats: 1,
        }
    }

    /// `/healthz` on a fresh connection and a room round trip, each within
    /// [`PROMPT`].
    fn round(&mut self) -> Result<(), String> {
        let (took, r) = timed_get(self.server, lo(1), "/healthz", PROMPT)
            .map_err(|e| format!("bystander /healthz: {e}"))?;
        if r.status != 200 {
            return Err(format!("bystander /healthz answered {}", r.status));
        }
        self.worst_health = self.worst_health.max(took);
        if self.chats < MAX_CHATS {
            let took = self.chat.try_check(PROMPT)?;
            self.chats += 1;
            self.worst_chat = self.worst_chat.max(took);
        }
        self.rounds += 1;
        Ok(())
    }

    /// Rounds every 200 ms for at least `min`, then until `done()`, at most
    /// `max`; the first slow or failed round ends it.
    fn during(
        &mut self,
        min: Duration,
        max: Duration,
        done: impl Fn() -> bool,
    ) -> Result<(), String> {
        let started = Instant::now();
        loop {
            self.round().map_err(|e| {
                format!(
                    "{e} ({:.1} s into the attack, round {})",
                    started.elapsed().as_secs_f64(),
                    self.rounds + 1
                )
            })?;
            let el = started.elapsed();
            if el >= max || (el >= min && done()) {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn summary(&self) -> String {
        format!(
            "{} bystander rounds, worst /healthz {:?}, worst room round trip {:?}",
            self.rounds, self.worst_health, self.worst_chat
        )
    }
}

/// One daemon under attack: an [`RssWatch`] on it, the RSS the attack
/// started from, its bystanders, and what they saw while it lasted.
struct Scene<'a> {
    rss: RssWatch,
    /// The RSS before the attack, for messages ([`Scene::new`] takes it; a
    /// test that fills the daemon first takes it again after the fill).
    base: u64,
    watch: Watch<'a>,
    /// Set when the attack is over: ends the pump and whatever else the
    /// attacker runs alongside.
    stop: Arc<AtomicBool>,
    /// Whether the bystanders were served promptly while the attack lasted.
    seen: Result<(), String>,
}

impl<'a> Scene<'a> {
    fn new(server: &'a Server) -> Scene<'a> {
        let rss = RssWatch::start(server, KILL_CAP_KIB);
        let base = server.rss_kib();
        Scene {
            rss,
            base,
            watch: Watch::join(server),
            stop: Arc::new(AtomicBool::new(false)),
            seen: Ok(()),
        }
    }

    /// The bystanders take rounds (see [`Watch::during`]) while the attack
    /// runs, until `done()`.
    fn during(&mut self, min: Duration, max: Duration, done: impl Fn() -> bool) {
        self.seen = self.watch.during(min, max, done);
    }

    /// One bystander round after step `after` of an attack, unless one
    /// already failed.
    fn round_after(&mut self, after: &str) {
        if self.seen.is_ok() {
            self.seen = self
                .watch
                .round()
                .map_err(|e| format!("{e} (after {after})"));
        }
    }

    /// The attack: writes `chunk` over and over into `stream` (never reading),
    /// up to `total` bytes, from a thread of its own, while the bystanders
    /// take rounds for `min` to `max`; then stops it and hands back what it
    /// pumped and the stream.
    fn pump(
        &mut self,
        stream: TcpStream,
        chunk: Vec<u8>,
        total: u64,
        min: Duration,
        max: Duration,
    ) -> (Pumped, TcpStream) {
        let attack = pump_in_background(stream, chunk, total, self.stop.clone());
        self.during(min, max, || attack.is_finished());
        self.stop.store(true, Ordering::Relaxed);
        attack.join().expect("attacker")
    }

    /// The daemon's peak RSS, the bystanders' rounds and their verdict, for
    /// messages.
    fn report(&self) -> String {
        format!(
            "{}; {}; {}",
            rss_line(&self.rss, self.base),
            self.watch.summary(),
            verdict(&self.seen)
        )
    }

    /// The daemon held: its RSS stayed under `bound_kib` and the bystanders
    /// were served promptly throughout.
    fn assert_held(&self, bound_kib: u64, ctx: &str) {
        assert_rss_under(&self.rss, bound_kib, ctx);
        if let Err(e) = &self.seen {
            panic!("{e}; {ctx}");
        }
    }

    /// After the attack: the daemon is still running, answers `/healthz`,
    /// its rooms carry messages and `/echo` echoes.
    fn alive_and_serving(&mut self, ctx: &str) {
        let server = self.watch.server;
        assert!(
            rss_kib_of(server.pid()).is_some(),
            "the daemon is gone after the attack; {ctx}; log tail: {:?}",
            tail(&server.log())
        );
        self.watch
            .round()
            .unwrap_or_else(|e| panic!("after the attack: {e}; {ctx}"));
        let mut echo = RawWs::connect(server, "/echo");
        echo.send_text("after the attack");
        assert_eq!(echo.recv_text(), "after the attack", "{ctx}");
    }
}

/// The bystanders' verdict, for messages.
fn verdict(seen: &Result<(), String>) -> String {
    match seen {
        Ok(()) => "bystanders served promptly".into(),
        Err(e) => format!("BYSTANDERS FAILED: {e}"),
    }
}

fn tail(log: &[String]) -> &[String] {
    &log[log.len().saturating_sub(5)..]
}

/// The peak RSS and whether the watchdog had to kill the daemon, for messages.
fn rss_line(rss: &RssWatch, base_kib: u64) -> String {
    format!(
        "peak RSS {} MiB (at start {} MiB){}",
        rss.peak_kib() / 1024,
        base_kib / 1024,
        if rss.killed() {
            format!(", KILLED past {} MiB", rss.cap_kib / 1024)
        } else {
            String::new()
        }
    )
}

fn assert_rss_under(rss: &RssWatch, bound_kib: u64, ctx: &str) {
    assert!(
        !rss.killed() && rss.peak_kib() < bound_kib,
        "the daemon's RSS went over {} MiB; {ctx}",
        bound_kib / 1024
    );
}

/// `frame` repeated to fill about 64 KiB, whole frames only.
fn chunk_of(frame: &[u8]) -> Vec<u8> {
    frame.repeat((64 * 1024 / frame.len()).max(1))
}

/// One masked frame.
fn masked_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_masked(&mut out, opcode, payload, MaskRng::from_os().mask());
    out
}

/// What a drained WebSocket peer had been sent.
#[derive(Debug, Default)]
struct Drained {
    pongs: u64,
    messages: u64,
    rate_limited: u64,
    other_text: u64,
    close: Option<Option<u16>>,
    eof: bool,
}

impl Drained {
    fn count(&mut self, text: &str) {
        match event_kind(text).as_str() {
            "message" => self.messages += 1,
            "error:rate_limited" => self.rate_limited += 1,
            _ => self.other_text += 1,
        }
    }
}

/// The `type` of a room event (`error:CODE` for errors), without parsing
/// the content of a large one.
fn event_kind(text: &str) -> String {
    if text.len() <= 8192 {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
            return "not-json".into();
        };
        let kind = v["type"].as_str().unwrap_or("none").to_string();
        return match v["code"].as_str() {
            Some(code) if kind == "error" => format!("error:{code}"),
            _ => kind,
        };
    }
    let mut end = text.len().min(256);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end]
        .split("\"type\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("none")
        .to_string()
}

/// Reads everything `raw` is sent until it is quiet for `quiet`, ends, or
/// `max` passes; counts it.
fn drain(raw: &mut RawWs, quiet: Duration, max: Duration) -> Drained {
    let started = Instant::now();
    let mut d = Drained::default();
    while started.elapsed() < max {
        match raw.recv_within(quiet) {
            Polled::Frame(Frame::Pong(_)) => d.pongs += 1,
            Polled::Frame(Frame::Text(t)) => d.count(&t),
            Polled::Frame(Frame::Close(code, _)) => d.close = Some(code),
            Polled::Frame(_) => {}
            Polled::Quiet => break,
            Polled::Eof => {
                d.eof = true;
                break;
            }
        }
    }
    d
}

/// A room member on a raw socket from `from` that has read its `welcome`.
fn join_raw(server: &Server, from: std::net::IpAddr, path: &str) -> RawWs {
    let stream = connect_from(from, server.addr, None).expect("connect");
    let mut raw = RawWs::connect_from(HttpConn::from_stream(stream), server.addr, path);
    let welcome = raw.recv_text();
    assert!(welcome.contains("\"type\":\"welcome\""), "{welcome:.200}");
    raw
}

/// Posts `text` and waits for its own `message` event; returns the event.
fn post(raw: &mut RawWs, text: &str) -> serde_json::Value {
    raw.send_text(text);
    loop {
        let t = raw.recv_text();
        match event_kind(&t).as_str() {
            "message" => return serde_json::from_str(&t).expect("event is JSON"),
            "error:rate_limited" => panic!("posting was rate limited"),
            _ => {}
        }
    }
}

// ---- the attacks -----------------------------------------------------------

/// Old daemon: it read the pipeline to the end and queued one 23 KB page per
/// 18-byte request, RSS into gigabytes and a crash.
#[test]
fn pipelined_get_flood_without_reading_is_bounded() {
    let server = Server::start(&[]);
    let mut scene = Scene::new(&server);
    let before = server.metric("wisp_http_requests_total");

    let stream = connect_tuned(lo(2), server.addr, Some(4096), None).unwrap();
    const REQUESTS: u64 = 300_000;
    let req = b"GET / HTTP/1.1\r\n\r\n";
    let (pumped, stream) = scene.pump(
        stream,
        chunk_of(req),
        REQUESTS * req.len() as u64,
        Duration::from_secs(6),
        Duration::from_secs(12),
    );
    let ctx = format!(
        "attacker wrote {} requests ({:?} after {:.1} s); {}",
        pumped.accepted / req.len() as u64,
        pumped.end,
        pumped.elapsed.as_secs_f64(),
        scene.report()
    );
    println!("pipelined GET: {ctx}");
    scene.assert_held(64 * 1024, &ctx);
    // Backpressure: while the attacker does not read, the daemon answers no
    // more than its output budget and the socket buffers hold (a few MiB of
    // pages), not the pipeline (241,000 requests, gigabytes of answers).
    let answered =
        server.metric("wisp_http_requests_total") - before - f64::from(scene.watch.rounds);
    let page = server.get("/").body.len() as f64 + 200.0;
    assert!(
        answered * page < 16.0 * MIB as f64,
        "{answered} of the pipelined requests answered ({page} bytes each) to a client that reads nothing; {ctx}"
    );
    drop(stream);
    scene.alive_and_serving(&ctx);
}

/// A connection paused with pipelined requests in its tail, then read a little and paused again,
/// over and over: it is answered as it reads, its kept input stays bounded (the tail is served
/// before anything more is read), and nobody else waits.
#[test]
fn pipelined_requests_read_slowly_keep_the_tail_bounded() {
    let server = Server::start(&[]);
    let mut scene = Scene::new(&server);

    let stream = connect_tuned(lo(20), server.addr, Some(4096), None).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let req = b"GET / HTTP/1.1\r\n\r\n";
    // Read slowly (about 400 KB/s): the daemon pauses and resumes this connection many times.
    let slow = {
        let stop = scene.stop.clone();
        thread::spawn(move || {
            let _ = reader.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = vec![0u8; 4096];
            let mut total = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(_) => {}
                }
                thread::sleep(Duration::from_millis(10));
            }
            total
        })
    };
    let (pumped, stream) = scene.pump(
        stream,
        chunk_of(req),
        64 * MIB,
        Duration::from_secs(6),
        Duration::from_secs(12),
    );
    let read = slow.join().expect("reader");
    let ctx = format!(
        "attacker wrote {} requests ({:?}), read {read} bytes of answers; {}",
        pumped.accepted / req.len() as u64,
        pumped.end,
        scene.report()
    );
    println!("pipelined, read slowly: {ctx}");
    assert!(read > 1_000_000, "the slow reader was answered: {ctx}");
    scene.assert_held(64 * 1024, &ctx);
    drop(stream);
    scene.alive_and_serving(&ctx);
}

/// Old daemon: every ping queued a pong and the read loop held the turn
/// while the flood lasted (issue: 300 MiB of empty pings).
#[test]
fn ping_flood_without_reading_pongs_is_bounded() {
    let server = Server::start(&[]);
    let mut scene = Scene::new(&server);

    let stream = connect_tuned(lo(3), server.addr, Some(4096), None).unwrap();
    let mut pinger = RawWs::connect_from(HttpConn::from_stream(stream), server.addr, "/echo");
    let writer = pinger.conn.stream.try_clone().unwrap();
    let ping = masked_frame(OpCode::Ping, b"");
    let (pumped, _) = scene.pump(
        writer,
        chunk_of(&ping),
        300 * MIB,
        Duration::from_secs(3),
        Duration::from_secs(14),
    );
    let pings = pumped.accepted / ping.len() as u64;
    let ctx0 = format!(
        "attacker wrote {} MiB = {pings} pings ({:?} after {:.1} s); {}",
        pumped.accepted / MIB,
        pumped.end,
        pumped.elapsed.as_secs_f64(),
        scene.report()
    );
    println!("ping flood: {ctx0}");
    scene.assert_held(64 * 1024, &ctx0);
    // Now the pinger reads what it was sent: coalesced pongs, at most one
    // per read batch (here: at least one per 600 bytes of pings read).
    let got = drain(&mut pinger, Duration::from_secs(1), Duration::from_secs(15));
    let ctx = format!("{ctx0}; the pinger then read {got:?}");
    println!("ping flood: {ctx}");
    assert!(
        got.pongs <= pings / 100 + 64,
        "{} pongs for {pings} pings: not coalesced; {ctx}",
        got.pongs
    );
    drop(pinger);
    scene.alive_and_serving(&ctx);
}

/// Old daemon: each message over the rate limit queued its own
/// `rate_limited` error (issue: 100 MiB of 1-byte messages, ~15 M errors).
#[test]
fn message_flood_over_the_rate_limit_gets_one_error_per_refill() {
    let server = Server::start(&[]);
    let mut scene = Scene::new(&server);

    let stream = connect_tuned(lo(4), server.addr, Some(4096), None).unwrap();
    let mut flooder = RawWs::connect_from(
        HttpConn::from_stream(stream),
        server.addr,
        "/ws/flooded/mallory",
    );
    let writer = flooder.conn.stream.try_clone().unwrap();
    let msg = masked_frame(OpCode::Text, b"x");
    let started = Instant::now();
    let (pumped, _) = scene.pump(
        writer,
        chunk_of(&msg),
        100 * MIB,
        Duration::from_secs(3),
        Duration::from_secs(14),
    );
    let ctx0 = format!(
        "attacker wrote {} messages ({:?} after {:.1} s); {}",
        pumped.accepted / msg.len() as u64,
        pumped.end,
        pumped.elapsed.as_secs_f64(),
        scene.report()
    );
    println!("message flood: {ctx0}");
    scene.assert_held(64 * 1024, &ctx0);
    let got = drain(
        &mut flooder,
        Duration::from_secs(1),
        Duration::from_secs(15),
    );
    let secs = started.elapsed().as_secs_f64();
    // Refills over the whole run: 100/60 per connection plus 300/60 per
    // address. A handful per refill at most (2), plus 10 to start with.
    let refills = secs * (100.0 / 60.0 + 300.0 / 60.0);
    let allowed_errors = 10.0 + 2.0 * refills;
    let allowed_messages = 100.0 + secs * 100.0 / 60.0 + 5.0;
    let ctx = format!("{ctx0}; after {secs:.1} s the flooder read {got:?}");
    println!("message flood: {ctx}");
    assert!(
        (got.rate_limited as f64) <= allowed_errors,
        "{} rate_limited errors, at most {allowed_errors:.0} allowed; {ctx}",
        got.rate_limited
    );
    assert!(
        (got.messages as f64) <= allowed_messages,
        "{} messages accepted, at most {allowed_messages:.0}; {ctx}",
        got.messages
    );
    drop(flooder);
    scene.alive_and_serving(&ctx);
}

/// Old daemon: each `GET /messages` rendered the whole global history (here
/// 300 messages of 16,000 control characters, ~29 MB of `\u0001` escapes)
/// and a pipeline of them queued one such answer per request.
#[test]
fn pipelined_history_gets_on_a_control_character_history_are_bounded() {
    let server = Server::start(&["--rate-limit", "0"]);
    let mut scene = Scene::new(&server);
    // Fill: 4 addresses x 75 messages, under the per-address limit (300/60).
    let text = "\u{1}".repeat(16_000);
    for x in 10..14 {
        let stream = connect_from(lo(x), server.addr, None).unwrap();
        let mut filler = RawWs::connect_from(HttpConn::from_stream(stream), server.addr, "/ws");
        for _ in 0..75 {
            filler.send_text(&text);
            assert_eq!(filler.recv_text().len(), text.len(), "global echo");
        }
    }
    scene.base = server.rss_kib();
    let before = server.metric("wisp_http_requests_total");

    let stream = connect_tuned(lo(5), server.addr, Some(4096), None).unwrap();
    let req = b"GET /messages HTTP/1.1\r\nHost: t\r\n\r\n";
    const REQUESTS: u64 = 2000;
    let (pumped, stream) = scene.pump(
        stream,
        req.repeat(100),
        REQUESTS * req.len() as u64,
        Duration::from_secs(6),
        Duration::from_secs(12),
    );
    let ctx = format!(
        "attacker wrote {} requests ({:?}); {}",
        pumped.accepted / req.len() as u64,
        pumped.end,
        scene.report()
    );
    println!("pipelined /messages: {ctx}");
    // 4.8 MB of history (29 MB as JSON) plus the attacker's budget.
    scene.assert_held(96 * 1024, &ctx);
    let answered =
        server.metric("wisp_http_requests_total") - before - f64::from(scene.watch.rounds);
    assert!(
        answered < 200.0,
        "{answered} of the pipelined history requests answered to a client that reads nothing; {ctx}"
    );
    // Each answer is bounded: at most ~1 MiB, marked as cut.
    let (_, r) = timed_get(&server, lo(1), "/messages", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("GET /messages: {e}; {ctx}"));
    assert_eq!(r.status, 200);
    assert!(
        r.body.len() as u64 <= MIB + MIB / 10,
        "GET /messages answered {} bytes; {ctx}",
        r.body.len()
    );
    let v = r.json();
    assert_eq!(v["more"], true, "a cut answer says more: true");
    assert!(!v["messages"].as_array().unwrap().is_empty());
    // The attacker's own first answer was bounded too.
    let mut c = HttpConn::from_stream(stream);
    match c.try_read_response(Duration::from_secs(5)) {
        Ok(first) => assert!(
            first.body.len() as u64 <= MIB + MIB / 10,
            "the attacker's first answer was {} bytes",
            first.body.len()
        ),
        Err(e) => println!("pipelined /messages: attacker's first answer not readable: {e}"),
    }
    drop(c);
    scene.alive_and_serving(&ctx);
}

/// Old daemon: a room holding 99 messages of 65,000 bytes made a `welcome`
/// of 6.4 MB, over the output budget: every joiner was closed 1008.
#[test]
fn big_room_history_does_not_lock_out_a_joiner() {
    let server = Server::start(&[]);
    let mut scene = Scene::new(&server);
    let mut poster = join_raw(&server, lo(6), "/ws/big/poster");
    let mut posted = Vec::new();
    for i in 1..=99 {
        let mut text = format!("{i:02} ");
        text.push_str(&"x".repeat(65_000 - text.len()));
        posted.push(post(&mut poster, &text)["id"].as_u64().unwrap());
    }
    assert_eq!(posted, (1..=99).collect::<Vec<u64>>());
    scene.base = server.rss_kib();

    let addr = server.addr;
    let joiner = thread::spawn(move || -> Result<(usize, Vec<u64>), String> {
        // A receive buffer and MSS like a distant client's: the kernel
        // cannot take the whole history off the daemon's hands at once.
        let stream =
            connect_tuned(lo(1), addr, Some(64 * 1024), Some(1400)).map_err(|e| e.to_string())?;
        let mut raw = RawWs::connect_from(HttpConn::from_stream(stream), addr, "/ws/big/joiner");
        let mut welcome_len = None;
        let mut ids = Vec::new();
        while ids.len() < 99 {
            match raw.recv_within(Duration::from_secs(5)) {
                Polled::Frame(Frame::Text(t)) => {
                    let v: serde_json::Value =
                        serde_json::from_str(&t).map_err(|e| format!("not JSON: {e}"))?;
                    match v["type"].as_str() {
                        Some("welcome") => {
                            welcome_len = Some(t.len());
                            for m in v["history"].as_array().ok_or("no history")? {
                                ids.push(m["id"].as_u64().ok_or("no id")?);
                            }
                        }
                        Some("message") => {
                            if welcome_len.is_none() {
                                return Err("a message before the welcome".into());
                            }
                            ids.push(v["id"].as_u64().ok_or("no id")?);
                        }
                        _ => {}
                    }
                }
                Polled::Frame(Frame::Close(code, reason)) => {
                    return Err(format!(
                        "closed {code:?} {reason:?} after {} ids (welcome {welcome_len:?} bytes)",
                        ids.len()
                    ))
                }
                Polled::Frame(_) => {}
                Polled::Quiet => return Err(format!("nothing for 5 s after {} ids", ids.len())),
                Polled::Eof => {
                    return Err(format!(
                        "EOF after {} ids (welcome {welcome_len:?} bytes)",
                        ids.len()
                    ))
                }
            }
        }
        Ok((welcome_len.unwrap_or(0), ids))
    });
    scene.during(Duration::from_secs(1), Duration::from_secs(20), || {
        joiner.is_finished()
    });
    let got = joiner.join().unwrap_or_else(|p| {
        Err(format!(
            "joiner panicked: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        ))
    });
    let ctx = scene.report();
    println!("big welcome: joiner {:?}; {ctx}", got.as_ref().map(|g| g.0));
    let (welcome_len, ids) = got.unwrap_or_else(|e| panic!("the joiner: {e}; {ctx}"));
    assert_eq!(ids, (1..=99).collect::<Vec<u64>>(), "{ctx}");
    assert!(
        welcome_len <= 256 * 1024 + 70_000,
        "welcome of {welcome_len} bytes, want it cut at ~256 KiB; {ctx}"
    );
    scene.assert_held(64 * 1024, &ctx);
    scene.alive_and_serving(&ctx);
}

/// What one connection got when it tried to store messages in a room.
#[derive(Debug, Default, Clone, Copy)]
struct Filled {
    accepted: u64,
    rate_limited: u64,
    closed: Option<Option<u16>>,
}

/// Over a fresh connection from `from`, tries to store `n` messages of
/// `size` control characters in `room`, reading the (6x escaped) echoes as
/// they come; a ping after the last message marks the end of the answers.
fn fill_room(server: &Server, from: std::net::IpAddr, room: &str, n: usize, size: usize) -> Filled {
    let mut raw = join_raw(server, from, &format!("/ws/{room}/filler"));
    let mut writer = raw.conn.stream.try_clone().unwrap();
    let writing = thread::spawn(move || {
        let frame = masked_frame(OpCode::Text, "\u{1}".repeat(size).as_bytes());
        for _ in 0..n {
            if writer.write_all(&frame).is_err() {
                return;
            }
        }
        let _ = writer.write_all(&masked_frame(OpCode::Ping, b"end"));
    });
    let mut got = Drained::default();
    loop {
        match raw.recv_within(Duration::from_secs(10)) {
            Polled::Frame(Frame::Pong(p)) if p == b"end" => break,
            Polled::Frame(Frame::Text(t)) => got.count(&t),
            Polled::Frame(Frame::Close(code, _)) => got.close = Some(code),
            Polled::Frame(_) => {}
            Polled::Quiet | Polled::Eof => break,
        }
    }
    let _ = writing.join();
    Filled {
        accepted: got.messages,
        rate_limited: got.rate_limited,
        closed: got.close,
    }
}

/// Old daemon: rooms had no byte budget, and reconnecting refilled the
/// rate limit, so one client could store 6.5 MB per room in as many rooms as
/// it liked (issue: "fill").
#[test]
fn filling_many_rooms_is_bounded_by_history_max_bytes_and_the_per_address_limit() {
    const BUDGET: u64 = 8 * MIB;
    let budget = BUDGET.to_string();
    let server = Server::start(&["--history-max-bytes", &budget]);
    let mut scene = Scene::new(&server);
    let started = Instant::now();

    // One address, a new connection per room: the per-address bucket
    // (300/60) is not refilled by reconnecting.
    let mut one = Vec::new();
    for r in 0..6 {
        one.push(fill_room(
            &server,
            lo(7),
            &format!("fill-a{r}"),
            100,
            65_000,
        ));
        scene.round_after(&format!("room a{r}"));
    }
    let one_secs = started.elapsed().as_secs_f64();
    // Then more addresses, each within its own limits: 1,200 more messages.
    let mut many = Vec::new();
    for x in 20..24 {
        for r in 0..3 {
            many.push(fill_room(
                &server,
                lo(x),
                &format!("fill-b{x}-{r}"),
                100,
                65_000,
            ));
            scene.round_after(&format!("room b{x}-{r}"));
        }
    }
    let from_one: u64 = one.iter().map(|f| f.accepted).sum();
    let stored: u64 = from_one + many.iter().map(|f| f.accepted).sum::<u64>();
    let history_bytes = server.metric("wisp_history_bytes");
    let dropped = server.metric("wisp_history_dropped_total");
    let ctx = format!(
        "one address stored {from_one} ({:?}), {stored} stored in all ({} MB raw); \
         wisp_history_bytes {history_bytes}, wisp_history_dropped_total {dropped}; {}",
        one.iter().map(|f| f.accepted).collect::<Vec<_>>(),
        stored * 65_000 / 1_000_000,
        scene.report()
    );
    println!("fill: {ctx}");
    // Budget plus 64 MiB for the daemon itself, one echo in flight per
    // connection and the allocator's slack.
    scene.assert_held((BUDGET + 64 * MIB) / 1024, &ctx);
    assert!(
        history_bytes > 0.0 && history_bytes <= BUDGET as f64,
        "wisp_history_bytes {history_bytes} not within the budget {BUDGET}; {ctx}"
    );
    assert!(
        dropped >= 1.0,
        "{stored} messages of 65,000 bytes stored under an 8 MiB budget and none dropped; {ctx}"
    );
    // 300 per address per minute plus what refilled meanwhile.
    let allowed = 300.0 + one_secs * 300.0 / 60.0 + 3.0;
    assert!(
        (from_one as f64) <= allowed,
        "one address stored {from_one} messages by reconnecting, at most {allowed:.0}; {ctx}"
    );
    assert!(
        one.iter().skip(3).any(|f| f.rate_limited > 0),
        "no rate_limited error after the fourth room from one address; {ctx}"
    );
    assert!(
        one.iter().chain(&many).all(|f| f.closed.is_none()),
        "a filler that reads its echoes was closed; {ctx}"
    );
    scene.alive_and_serving(&ctx);
}

/// Sends `n` short messages from a fresh connection and counts how many were
/// accepted (a ping after them marks the end of the answers).
fn accepted_of(server: &Server, from: std::net::IpAddr, n: usize) -> Filled {
    fill_room(server, from, "per-address", n, 10)
}

/// Old daemon: the limit was per connection only, so reconnecting gave a
/// full bucket.
#[test]
fn reconnecting_does_not_refill_the_per_address_rate_limit() {
    let server = Server::start(&["--rate-limit", "5/60", "--rate-limit-per-ip", "8/60"]);
    let first = accepted_of(&server, lo(30), 5);
    assert_eq!(first.accepted, 5, "the first connection: {first:?}");
    let second = accepted_of(&server, lo(30), 5);
    assert_eq!(
        second.accepted, 3,
        "the second connection from the same address gets what is left of 8: {second:?}"
    );
    let other = accepted_of(&server, lo(31), 2);
    assert_eq!(other.accepted, 2, "another address has its own: {other:?}");
}

/// What a slow reader got.
#[derive(Debug)]
struct SlowRead {
    status: u16,
    content_length: Option<usize>,
    body: Vec<u8>,
    elapsed: Duration,
    eof_early: bool,
}

/// Sends `request` from `from` with a small receive buffer and MSS, then
/// reads the answer at about `bytes_per_s`.
fn slow_read(
    addr: std::net::SocketAddr,
    from: std::net::IpAddr,
    request: String,
    bytes_per_s: f64,
) -> SlowRead {
    let mut s = connect_tuned(from, addr, Some(8192), Some(1024)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut head: Option<(u16, Option<usize>, usize)> = None;
    let mut chunk = [0u8; 8192];
    let mut eof_early = false;
    while started.elapsed() < Duration::from_secs(40) {
        if head.is_none() {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = resp.parse(&buf) {
                let cl = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok());
                head = Some((resp.code.unwrap_or(0), cl, n));
            }
        }
        if let Some((_, Some(cl), n)) = head {
            if buf.len() >= n + cl {
                break;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => {
                eof_early = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if is_closed(&e) => {
                eof_early = true;
                break;
            }
            Err(_) => {}
        }
        // Pace: never ahead of `bytes_per_s`.
        let due = Duration::from_secs_f64(buf.len() as f64 / bytes_per_s);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            thread::sleep(wait);
        }
    }
    let (status, content_length, n) = head.unwrap_or((0, None, buf.len()));
    SlowRead {
        status,
        content_length,
        body: buf[n..].to_vec(),
        elapsed: started.elapsed(),
        eof_early,
    }
}

/// Old daemon: an answer still being read when the close wait (5 s, after
/// `Connection: close`) or the keep-alive wait (`--handshake-timeout`) ran
/// out was cut, whatever its progress.
#[test]
fn slowly_read_large_answers_are_not_truncated() {
    let server = Server::start(&["--handshake-timeout", "2"]);
    let mut watch = Watch::join(&server);
    let mut poster = join_raw(&server, lo(8), "/ws/slowread/poster");
    for i in 0..20 {
        post(&mut poster, &format!("{i:02} {}", "y".repeat(60_000)));
    }
    let addr = server.addr;
    let path = "/rooms/slowread/messages";
    let close = thread::spawn(move || {
        slow_read(
            addr,
            lo(9),
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
            120_000.0,
        )
    });
    let keep = thread::spawn(move || {
        slow_read(
            addr,
            lo(9),
            format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"),
            120_000.0,
        )
    });
    let seen = watch.during(Duration::from_secs(1), Duration::from_secs(45), || {
        close.is_finished() && keep.is_finished()
    });
    let close = close.join().expect("reader");
    let keep = keep.join().expect("reader");
    let cases = [
        ("Connection: close", &close, Duration::from_secs(5)),
        ("keep-alive", &keep, Duration::from_secs(2)),
    ];
    let line = |name: &str, r: &SlowRead| {
        format!(
            "{name}: status {}, Content-Length {:?}, got {} bytes in {:?}, EOF early: {}",
            r.status,
            r.content_length,
            r.body.len(),
            r.elapsed,
            r.eof_early
        )
    };
    let all: Vec<String> = cases.iter().map(|(n, r, _)| line(n, r)).collect();
    println!("slow read: {all:?}");
    for (name, r, wait) in cases {
        let ctx = format!("{}; all: {all:?}", line(name, r));
        assert_eq!(r.status, 200, "{ctx}");
        assert_eq!(Some(r.body.len()), r.content_length, "truncated: {ctx}");
        serde_json::from_slice::<serde_json::Value>(&r.body).expect("the answer is JSON");
        assert!(
            r.elapsed > wait + Duration::from_millis(500),
            "read faster than the daemon's {wait:?} wait: proves nothing; {ctx}"
        );
    }
    seen.unwrap_or_else(|e| panic!("{e}; {}", watch.summary()));
}

// ---- the small fixes ---------------------------------------------------------

#[test]
fn percent_encoded_room_in_the_history_path_finds_the_room() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(&server, "/ws/caf%C3%A9/alice");
    assert_eq!(read_event(&mut ws)["room_id"], "café");
    ws.send(tungstenite::Message::Text("bonjour".into()))
        .unwrap();
    assert_eq!(read_event_of(&mut ws, "message")["content"], "bonjour");
    let r = server.get("/rooms/caf%C3%A9/messages");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["room_id"], "café", "{v}");
    let messages = v["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1, "{v}");
    assert_eq!(messages[0]["content"], "bonjour");
}

#[test]
fn upgrade_announcing_a_body_gets_400() {
    let server = Server::start(&[]);
    for (extra, body) in [
        ("Content-Length: 5\r\n", "hello"),
        ("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
    ] {
        let mut c = HttpConn::connect(server.addr);
        let mut req = upgrade_request("/echo", extra);
        req.push_str(body);
        c.send(req.as_bytes());
        let r = c.read_head();
        assert_eq!(r.status, 400, "{extra:?}: {}", r.head);
        assert!(c.closed_within(Duration::from_secs(6)), "{extra:?}");
    }
    assert_eq!(server.healthz()["status"], "ok");
}

#[test]
fn http_1_0_upgrade_gets_400() {
    let server = Server::start(&[]);
    let mut c = HttpConn::connect(server.addr);
    let req = upgrade_request("/echo", "").replacen("HTTP/1.1", "HTTP/1.0", 1);
    c.send(req.as_bytes());
    let r = c.read_head();
    assert_eq!(r.status, 400, "{}", r.head);
}

#[test]
fn sighup_is_ignored_with_one_log_line() {
    let server = Server::start(&[]);
    let mut echo = RawWs::connect(&server, "/echo");
    server.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(3), || server
            .log()
            .iter()
            .any(|l| l.contains("SIGHUP ignored"))),
        "no 'SIGHUP ignored' line; log: {:?}",
        server.log()
    );
    assert!(rss_kib_of(server.pid()).is_some(), "the daemon exited");
    assert_eq!(server.healthz()["status"], "ok");
    echo.send_text("still");
    assert_eq!(echo.recv_text(), "still");
    server.signal(libc::SIGHUP);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(server.healthz()["status"], "ok");
    let lines = server
        .log()
        .iter()
        .filter(|l| l.contains("SIGHUP ignored"))
        .count();
    assert!(
        (1..=2).contains(&lines),
        "one line per SIGHUP at most: {lines}"
    );
}

#[test]
fn since_minus_one_with_a_bogus_epoch_is_not_recovered() {
    let server = Server::start(&[]);
    let mut a = ws_connect(&server, "/ws/rec/alice");
    read_event(&mut a);
    a.send(tungstenite::Message::Text("one".into())).unwrap();
    read_event_of(&mut a, "message");
    let mut b = ws_connect(&server, "/ws/rec/bob?since=-1&epoch=bogus");
    let w = read_event(&mut b);
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["recovered"], false, "{w}");
    assert_eq!(w["history"][0]["content"], "one", "{w}");
}

#[test]
fn format_characters_are_removed_from_names() {
    let server = Server::start(&[]);
    let mut a = ws_connect(&server, "/ws/lobby/alice%E2%80%8B");
    let w = read_event(&mut a);
    assert_eq!(w["client_id"], "alice", "{w}");
    let mut b = ws_connect(&server, "/ws/lobby/alice%E2%80%8B");
    let w = read_event(&mut b);
    assert_eq!(w["client_id"], "alice#2", "{w}");
    // Bidi controls too, and in room names.
    let mut c = ws_connect(&server, "/ws/lob%E2%80%AEby/%E2%80%8Fcarol");
    let w = read_event(&mut c);
    assert_eq!(w["room_id"], "lobby", "{w}");
    assert_eq!(w["client_id"], "carol", "{w}");
}

#[test]
fn max_connections_above_the_fd_limit_is_clamped_and_answers_503() {
    let server = Server::start_with_nofile(&["--max-connections", "100000"], 96);
    // Open more than 96 descriptors allow, all at once, then read every answer.
    let mut conns: Vec<HttpConn> = (0..110)
        .map(|_| {
            let mut c = HttpConn::from_stream(connect_from(lo(40), server.addr, None).unwrap());
            let _ = c.try_send(upgrade_request("/echo", "").as_bytes());
            c
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut upgraded, mut refused, mut silent) = (0, 0, 0);
    for c in conns.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.try_read_response(left.max(Duration::from_millis(50))) {
            Ok(r) if r.status == 101 => upgraded += 1,
            Ok(r) if r.status == 503 => refused += 1,
            Ok(r) => panic!("unexpected answer {}", r.head),
            Err(_) => silent += 1,
        }
    }
    let ctx = format!("{upgraded} upgraded, {refused} got 503, {silent} no answer in 5 s");
    println!("fd clamp: {ctx}");
    assert_eq!(silent, 0, "connections left hanging: {ctx}");
    assert!(upgraded >= 1 && refused >= 1, "{ctx}");
    let warned = server
        .log()
        .iter()
        .filter(|l| l.contains("--max-connections"))
        .count();
    assert_eq!(
        warned,
        1,
        "want one warning naming --max-connections; log: {:?}",
        server.log()
    );
    drop(conns);
    assert!(
        wait_until(Duration::from_secs(5), || {
            timed_get(&server, lo(1), "/healthz", Duration::from_secs(1))
                .is_ok_and(|(_, r)| r.status == 200)
        }),
        "the daemon does not serve after the connections closed"
    );
}

#[test]
fn shutdown_counts_only_peers_that_answered_the_close() {
    let mut server = Server::start(&[]);
    let mut answering = ws_connect(&server, "/echo");
    answering
        .send(tungstenite::Message::Text("hi".into()))
        .unwrap();
    ws_read(&mut answering);
    let mut silent = RawWs::connect(&server, "/echo");
    silent.send_text("hi");
    assert_eq!(silent.recv_text(), "hi");
    server.signal(libc::SIGTERM);
    assert_eq!(ws_read_close(&mut answering), 1001);
    ws_expect_closed(&mut answering);
    drop(answering);
    // The silent peer reads the close and answers nothing.
    assert_eq!(silent.recv_close(), Some(1001));
    let status = server
        .wait_exit(Duration::from_secs(8))
        .expect("wisp still running 8 s after SIGTERM");
    assert!(status.success());
    drop(silent);
    let log = server.log();
    assert!(
        log.iter()
            .any(|l| l.contains("wisp stopped: 1 of 2 peers closed cleanly")),
        "want 'wisp stopped: 1 of 2 peers closed cleanly'; log: {log:?}"
    );
}

#[test]
fn history_views_take_limit_and_page_on_with_since() {
    let server = Server::start(&[]);
    let mut poster = join_raw(&server, lo(12), "/ws/pages/poster");
    for i in 1..=30 {
        post(&mut poster, &format!("m{i}"));
    }
    let page = |q: &str| {
        let r = server.get(&format!("/rooms/pages/messages?{q}"));
        assert_eq!(r.status, 200, "{q}");
        r.json()
    };
    let ids = |v: &serde_json::Value| -> Vec<u64> {
        v["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect()
    };
    let p1 = page("limit=10");
    assert_eq!(ids(&p1), (1..=10).collect::<Vec<_>>(), "{p1}");
    assert_eq!(p1["more"], true, "{p1}");
    let p2 = page("since=10&limit=10");
    assert_eq!(ids(&p2), (11..=20).collect::<Vec<_>>(), "{p2}");
    assert_eq!(p2["more"], true, "{p2}");
    let p3 = page("since=20&limit=10");
    assert_eq!(ids(&p3), (21..=30).collect::<Vec<_>>(), "{p3}");
    assert_ne!(p3["more"], true, "the last page: {p3}");
    let all = page("limit=5000");
    assert_eq!(
        ids(&all).len(),
        30,
        "limit over 1000 is capped, not refused"
    );

    let stream = connect_from(lo(13), server.addr, None).unwrap();
    let mut g = RawWs::connect_from(HttpConn::from_stream(stream), server.addr, "/ws");
    for i in 1..=30 {
        g.send_text(&format!("g{i}"));
        assert_eq!(g.recv_text(), format!("g{i}"));
    }
    let r = server.get("/messages?limit=10");
    assert_eq!(r.status, 200);
    let v = r.json();
    let texts: Vec<&str> = v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect();
    // The global channel has no ids to page by: a cut view shows the newest messages (what is
    // being said now), oldest first among them, and says that older ones were left out.
    assert_eq!(texts.len(), 10, "{v}");
    assert_eq!(texts[0], "g21", "the newest ten, oldest first: {v}");
    assert_eq!(texts[9], "g30", "the newest ten, oldest first: {v}");
    assert_eq!(v["more"], true, "{v}");
}

/// Token checks cost the reactor up to a third of a millisecond each (ES256), forged tokens as
/// much as valid ones: each peer address has a budget of them (`--token-checks-per-ip`). Past it,
/// upgrades get `429` and refreshes a `rate_limited` error, without verifying; other addresses are
/// not affected, and the budget refills.
#[test]
fn token_checks_are_budgeted_per_address() {
    let dir = std::env::temp_dir().join(format!("wisp-token-budget-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("secret");
    let secret = b"a secret of at least thirty-two bytes, for HS256";
    std::fs::write(&secret_file, secret).unwrap();
    let server = Server::start(&[
        "--auth",
        "token",
        "--token-secret-file",
        secret_file.to_str().unwrap(),
        "--token-checks-per-ip",
        "4/2",
    ]);
    let token = |sub: &str| {
        wisp::server::auth::mint(secret, sub, &["lobby".to_owned()], true, 600).unwrap()
    };
    let status = |from: &str, path: &str| {
        let stream = connect_from(from.parse().unwrap(), server.addr, None).unwrap();
        let mut conn = HttpConn::from_stream(stream);
        conn.send(upgrade_request(path, "").as_bytes());
        conn.read_response()
    };
    // Three forged tokens use three checks; a valid token uses the fourth and opens.
    for _ in 0..3 {
        let r = status(
            "127.0.0.1",
            "/ws/lobby/x?token=eyJhbGciOiJIUzI1NiJ9.e30.AAAA",
        );
        assert_eq!(r.status, 401, "{}", r.head);
    }
    let mut alice = RawWs::connect(
        &server,
        &format!("/ws/lobby/alice?token={}", token("alice")),
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&alice.recv_text()).unwrap()["type"],
        "welcome"
    );
    // The budget is spent: a valid token is not even looked at, and a refresh is refused.
    let r = status(
        "127.0.0.1",
        &format!("/ws/lobby/bob?token={}", token("bob")),
    );
    assert_eq!(r.status, 429, "{}", r.head);
    assert!(r.head.contains("Retry-After: 1"), "{}", r.head);
    alice.send_text(&format!(
        r#"{{"type":"refresh","token":"{}"}}"#,
        token("alice")
    ));
    let e: serde_json::Value = serde_json::from_str(&alice.recv_text()).unwrap();
    assert_eq!(e["code"], "rate_limited", "{e}");
    // Another address has its own budget.
    let r = status(
        "127.0.0.2",
        &format!("/ws/lobby/carl?token={}", token("carl")),
    );
    assert_eq!(r.status, 101, "{}", r.head);
    // It refills: 4 per 2 s.
    thread::sleep(Duration::from_millis(600));
    alice.send_text(&format!(
        r#"{{"type":"refresh","token":"{}"}}"#,
        token("alice")
    ));
    let e = loop {
        let e: serde_json::Value = serde_json::from_str(&alice.recv_text()).unwrap();
        if e["type"] != "join" && e["type"] != "leave" {
            break e; // not carl's coming and going
        }
    };
    assert_eq!(e["type"], "refreshed", "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
