//! Fan-out encoding: one chat message to N recipients' output queues, in
//! user space (what the kernel then does with the writes is the load tests'
//! business, `loadtest/`).
//!
//! Every variant starts from the same client text and ends with N queued
//! frames ready for a vectored write:
//!
//! - `wisp`: [`Chat::post`] (content check, id, event written straight into
//!   one shared frame, history insert), then one turn of the reactor's
//!   broadcast path ([`BenchFanout::turn`]): the frame linked into N cork
//!   lists and each list gathered into an `IoSlice` array. Nothing is copied
//!   or allocated per recipient.
//! - `copy-per-recipient`: the same `Chat::post`, then the frame copied into
//!   each recipient's own output buffer (a server with a write buffer per
//!   connection and no shared frames).
//! - `tungstenite`: the same `Chat::post` for the event text, then, as the
//!   tokio-tungstenite peer does, a `Message::Text` clone per recipient sent
//!   through that recipient's `tungstenite` 0.24 `WebSocket` (server role),
//!   which frames it into its own write buffer and flushes it to an
//!   in-memory sink.
//!
//! Throughput is in deliveries (recipients), so the three compare on the
//! cost per delivered message; with N = 1 it is the cost of one message.
//!
//! Run: `cargo bench --bench fanout`. Numbers: `docs/benchmarks.md`.

#[macro_use]
mod common;

use std::hint::black_box;
use std::io::{self, Read, Write};

use criterion::{BenchmarkId, Criterion, Throughput};
use tungstenite::protocol::{Role, WebSocket as Tungstenite};
use tungstenite::Message;
use wisp::_benchable::BenchFanout;
use wisp::chat::{Chat, ChatConfig, EventFrame, MemberId, Micros, Post, Resume, RoomKey};

const TEXT: &str =
    r#"{"content":"hello everyone, is the deploy done? I'm seeing 502s on staging"}"#;
/// A fixed wall-clock start: 2026-11-21T10:00:00Z in microseconds.
const T0: Micros = 1_795_255_200_000_000;
const RECIPIENTS: [usize; 4] = [1, 10, 100, 1000];

/// A room with one sender; history as the daemon keeps it by default.
fn room() -> (Chat, RoomKey, MemberId) {
    let cfg = ChatConfig {
        ttl_secs: 60,
        history_max: 1000,
        history_max_bytes: 64 << 20,
        welcome_history_bytes: 256 << 10,
        rate_limit: None,
        rate_limit_per_ip: None,
    };
    let mut chat = Chat::new(cfg, 42);
    let m = MemberId(1);
    let joined = chat.join(
        "general",
        "alice",
        m,
        std::net::Ipv4Addr::LOCALHOST.into(),
        Resume::default(),
        T0,
    );
    (chat, joined.key, m)
}

/// The `message` event for the next post.
fn post(chat: &mut Chat, key: RoomKey, m: MemberId, now: &mut Micros) -> EventFrame {
    *now += 1000;
    match chat.post(key, m, black_box(TEXT), *now) {
        Post::Broadcast { event, .. } => event,
        other => panic!("{other:?}"),
    }
}

/// A socket that takes every byte and has nothing to read.
struct Sink;

impl Read for Sink {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(black_box(buf).len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn bench_fanout(c: &mut Criterion) {
    for n in RECIPIENTS {
        let mut group = c.benchmark_group(format!("fanout/{n}"));
        group.throughput(Throughput::Elements(n as u64));

        group.bench_function(BenchmarkId::from_parameter("wisp"), |b| {
            let (mut chat, key, m) = room();
            let mut now = T0;
            let mut queues = BenchFanout::new(n);
            b.iter(|| {
                let event = post(&mut chat, key, m, &mut now);
                queues.turn(&event)
            })
        });

        group.bench_function(BenchmarkId::from_parameter("copy-per-recipient"), |b| {
            let (mut chat, key, m) = room();
            let mut now = T0;
            let mut buffers: Vec<Vec<u8>> = vec![Vec::with_capacity(4096); n];
            b.iter(|| {
                let event = post(&mut chat, key, m, &mut now);
                let frame = event.frame();
                let mut total = 0;
                for out in &mut buffers {
                    out.clear();
                    out.extend_from_slice(frame);
                    total += black_box(&out[..]).len();
                }
                total
            })
        });

        group.bench_function(BenchmarkId::from_parameter("tungstenite"), |b| {
            let (mut chat, key, m) = room();
            let mut now = T0;
            let mut sockets: Vec<Tungstenite<Sink>> = (0..n)
                .map(|_| Tungstenite::from_raw_socket(Sink, Role::Server, None))
                .collect();
            b.iter(|| {
                let event = post(&mut chat, key, m, &mut now);
                let message = Message::Text(event.text().to_owned());
                for ws in &mut sockets {
                    ws.send(message.clone()).expect("sink takes everything");
                }
            })
        });
        group.finish();
    }
}

bench_main! {
    measure_secs = 2;
    targets = bench_fanout
}
