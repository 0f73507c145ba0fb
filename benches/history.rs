//! Chat history: inserting a message and expiring a room's messages, with a
//! fake clock (`now` is a number passed in; the chat never reads a clock).
//!
//! - `post`: [`Chat::post`] of a typical JSON room message into a room with
//!   one member, no rate limit, `--history-max 1000`: after the first 1000
//!   posts every insert also drops the oldest entry, the steady state of a
//!   busy room. Each call builds the `message` event JSON (id, names,
//!   RFC 3339 timestamp) and stores it. Time advances 1 ms per post.
//! - `expire`: [`Chat::expire_room`] at a `now` past every message's TTL over
//!   a room holding N messages (all removed, each a freed boxed string). The
//!   room is refilled by `post` in the untimed setup of `iter_batched`;
//!   refilling costs some fifty times the expiry itself, so this group runs
//!   a short, flat-sampled measurement to keep the wall time low.
//!
//! Run: `cargo bench --bench history`. Numbers: `docs/benchmarks.md`.

#[macro_use]
mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput};
use wisp::chat::{Chat, ChatConfig, MemberId, Micros, Post, Resume, RoomKey};

const TEXT: &str =
    r#"{"content":"hello everyone, is the deploy done? I'm seeing 502s on staging"}"#;
/// A fixed wall-clock start: 2026-11-21T10:00:00Z in microseconds.
const T0: Micros = 1_795_255_200_000_000;
const TTL_SECS: u64 = 60;

fn chat_with_member(history_max: usize) -> (Chat, RoomKey, MemberId) {
    let cfg = ChatConfig {
        ttl_secs: TTL_SECS,
        history_max,
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

fn bench_post(c: &mut Criterion) {
    let mut group = c.benchmark_group("history/post");
    group.throughput(Throughput::Elements(1));
    group.bench_function("history-max-1000", |b| {
        let (mut chat, key, m) = chat_with_member(1000);
        let mut now = T0;
        b.iter(|| {
            now += 1000;
            let post = chat.post(key, m, black_box(TEXT), now);
            debug_assert!(matches!(post, Post::Broadcast { .. }));
            post
        })
    });
    group.finish();
}

fn bench_expire(c: &mut Criterion) {
    let mut group = c.benchmark_group("history/expire");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(20))
        .measurement_time(Duration::from_millis(100));
    for n in [100usize, 1000, 10_000] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("expire_room", n), |b| {
            b.iter_batched(
                || {
                    let (mut chat, key, m) = chat_with_member(n);
                    for i in 0..n as u64 {
                        chat.post(key, m, TEXT, T0 + i);
                    }
                    (chat, key)
                },
                |(mut chat, key)| {
                    let later = T0 + (n as u64) + TTL_SECS * 1_000_000;
                    let next = chat.expire_room(key, black_box(later));
                    assert_eq!(next, None, "every message expired");
                    chat
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

bench_main! {
    measure_secs = 2;
    targets = bench_post, bench_expire
}
