//! Frame decoding throughput: a receive buffer full of masked client frames,
//! read to the end.
//!
//! - `read/wisp`: [`WebSocket::read`] (`Role::Server`) called until the buffer
//!   is consumed: header decode, mask check, in-place unmask, event borrowed
//!   from the buffer (zero copies).
//! - `read/tungstenite`: the same bytes through `tungstenite` 0.24
//!   (`WebSocket::from_raw_socket` over a `Cursor<Vec<u8>>`, `Role::Server`,
//!   `read()` once per message). It copies from the stream into its own read
//!   buffer and returns an owned `Message` per frame; that is its design, and
//!   part of what is measured.
//! - `decode_header/wisp`: bare [`decode_header`] over the same buffer,
//!   skipping payloads (headers per second).
//!
//! `read` unmasks in place, so each iteration gets a fresh copy of the masked
//! input from `iter_batched` (`BatchSize::LargeInput`): the copy is made in the
//! untimed setup, and only decoding is measured. tungstenite's socket is
//! built in the setup too. Every frame is a final binary frame (no UTF-8
//! check on either side), masked with a fixed key; each buffer holds about
//! 256 KiB of payload.
//!
//! Run: `cargo bench --bench frame`. Numbers: `docs/benchmarks.md`.

#[macro_use]
mod common;

use std::hint::black_box;
use std::io::Cursor;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use wisp::protocol::frame::{decode_header, encode_header, Fin, MAX_HEADER};
use wisp::protocol::mask::unmask;
use wisp::protocol::{Decoded, OpCode, Role, WebSocket};

const SIZES: [(usize, &str); 3] = [(16, "16B"), (1024, "1KiB"), (64 * 1024, "64KiB")];
/// Payload bytes per buffer.
const TOTAL: usize = 256 * 1024;
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// `count` masked binary frames of `size` payload bytes each, as a client sends them.
fn masked_frames(size: usize, count: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * (size + MAX_HEADER));
    let mut header = [0u8; MAX_HEADER];
    for i in 0..count {
        let n = encode_header(
            &mut header,
            Fin::Final,
            OpCode::Binary,
            size as u64,
            Some(KEY),
        );
        out.extend_from_slice(&header[..n]);
        let start = out.len();
        out.extend((0..size).map(|j| (i + j * 7) as u8));
        unmask(&mut out[start..], KEY, 0);
    }
    out
}

fn bench_read(c: &mut Criterion) {
    for (size, label) in SIZES {
        let count = TOTAL / size;
        let input = masked_frames(size, count);
        let mut group = c.benchmark_group(format!("read/{label}"));
        // Payload bytes, so the three sizes compare on the data delivered.
        group.throughput(Throughput::Bytes((size * count) as u64));
        group.bench_function(BenchmarkId::new("wisp", format!("{count}x")), |b| {
            b.iter_batched(
                || input.clone(),
                |mut buf| {
                    let mut ws = WebSocket::new(Role::Server, 1 << 20);
                    let mut at = 0;
                    while at < buf.len() {
                        let (n, event) = ws.read(&mut buf[at..]).expect("valid frames");
                        black_box(event);
                        at += n;
                    }
                    buf
                },
                BatchSize::LargeInput,
            )
        });
        group.bench_function(BenchmarkId::new("tungstenite", format!("{count}x")), |b| {
            b.iter_batched(
                || {
                    tungstenite::protocol::WebSocket::from_raw_socket(
                        Cursor::new(input.clone()),
                        tungstenite::protocol::Role::Server,
                        None,
                    )
                },
                |mut ws| {
                    for _ in 0..count {
                        black_box(ws.read().expect("valid frames"));
                    }
                    ws
                },
                BatchSize::LargeInput,
            )
        });
        group.finish();
    }
}

fn bench_decode_header(c: &mut Criterion) {
    for (size, label) in SIZES {
        let count = TOTAL / size;
        let input = masked_frames(size, count);
        let mut group = c.benchmark_group(format!("decode_header/{label}"));
        group.throughput(Throughput::Elements(count as u64));
        group.bench_function(BenchmarkId::new("wisp", format!("{count}x")), |b| {
            b.iter(|| {
                let buf = black_box(&input[..]);
                let mut at = 0;
                while at < buf.len() {
                    let Ok(Decoded::Done(h)) = decode_header(&buf[at..]) else {
                        panic!("valid header");
                    };
                    at += h.header_len + h.payload_len as usize;
                }
                at
            })
        });
        group.finish();
    }
}

bench_main! {
    measure_secs = 3;
    targets = bench_read, bench_decode_header
}
