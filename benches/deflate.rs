//! permessage-deflate (RFC 7692): compressing and inflating chat-sized messages and a `welcome`.
//!
//! Each input is a `message` event as the chat sends it (JSON, 50 B to 4 KiB) or a `welcome`
//! carrying 1,000 of them. For each, at zlib levels 2 (the default) and 6:
//! - `compress`: [`Deflater::frame`], the whole compressed frame, done once per broadcast;
//! - `inflate`: [`Inflater::inflate`] of that payload, done once per received message.
//!
//! Each benchmark prints the compressed size once, so the ratio sits next to the time; the
//! `--deflate-min-bytes` default (256) comes from these sizes. Run: `cargo bench --bench deflate`.
//! Numbers: `docs/benchmarks.md`.

#[macro_use]
mod common;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use wisp::protocol::deflate::{Deflater, Inflater};
use wisp::protocol::OpCode;

const WORDS: [&str; 20] = [
    "hello", "there", "how", "is", "everyone", "doing", "today", "the", "build", "passed", "again",
    "after", "lunch", "we", "should", "ship", "it", "ok", "lol", "yes",
];

/// A room `message` event with `content_len` bytes of content.
fn event(id: usize, content_len: usize) -> String {
    let mut content = String::new();
    let mut k = id;
    while content.len() < content_len {
        content.push_str(WORDS[k % WORDS.len()]);
        content.push(' ');
        k = k.wrapping_mul(7).wrapping_add(3);
    }
    content.truncate(content_len);
    format!(
        r#"{{"type":"message","id":{id},"room_id":"general","client_id":"user{}","content":"{content}","timestamp":"2026-12-02T03:{:02}:{:02}.{:06}Z"}}"#,
        id % 17,
        id % 60,
        (id * 7) % 60,
        (id * 7919) % 1_000_000
    )
}

/// Messages of about `size` bytes (the JSON envelope is ~125 bytes; below that, content is cut).
fn message(size: usize) -> Vec<u8> {
    let mut m = event(5, size.saturating_sub(125).max(1)).into_bytes();
    m.truncate(size);
    m
}

fn welcome(n: usize) -> Vec<u8> {
    let history: Vec<String> = (0..n).map(|i| event(i, 60)).collect();
    format!(
        r#"{{"type":"welcome","room_id":"general","client_id":"alice","users":["alice","bob"],"history":[{}],"ttl_s":60,"epoch":"e1","recovered":true}}"#,
        history.join(",")
    )
    .into_bytes()
}

fn bench_deflate(c: &mut Criterion) {
    let mut inputs: Vec<(String, Vec<u8>)> = [50usize, 128, 256, 512, 1024, 4096]
        .iter()
        .map(|&n| (format!("{n}B"), message(n)))
        .collect();
    let w = welcome(1000);
    inputs.push((format!("welcome1000-{}KiB", w.len() >> 10), w));
    for (label, data) in &inputs {
        let mut group = c.benchmark_group(format!("deflate/{label}"));
        group.throughput(Throughput::Bytes(data.len() as u64));
        for level in [2u32, 6] {
            let mut d = Deflater::new(level);
            let mut out = Vec::new();
            let compressed = d
                .frame(OpCode::Text, data, &mut out)
                .map(|f| f[2..].to_vec());
            eprintln!(
                "deflate/{label} level {level}: {} -> {}",
                data.len(),
                compressed
                    .as_ref()
                    .map_or("not smaller: sent as is".to_string(), |c| format!(
                        "{} bytes ({:.0}%)",
                        c.len(),
                        100.0 * c.len() as f64 / data.len() as f64
                    ))
            );
            group.bench_function(BenchmarkId::new("compress", level), |b| {
                b.iter(|| {
                    d.frame(OpCode::Text, black_box(data), &mut out)
                        .map_or(0, |f| f.len())
                })
            });
            // The inflate side needs a compressed payload; its header is 2, 4 or 10 bytes.
            if let Some(z) = d.frame(OpCode::Text, data, &mut out) {
                let header = match z[1] & 0x7f {
                    126 => 4,
                    127 => 10,
                    _ => 2,
                };
                let payload = z[header..].to_vec();
                let mut inf = Inflater::new();
                group.bench_function(BenchmarkId::new("inflate", level), |b| {
                    b.iter(|| {
                        inf.inflate(black_box(&payload), 1 << 20)
                            .map_or(0, |o| o.len())
                    })
                });
            }
        }
        group.finish();
    }
}

bench_main! {
    measure_secs = 2;
    targets = bench_deflate
}
