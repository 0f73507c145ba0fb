//! Unmasking throughput (RFC 6455 §5.3), the hot loop of every received frame.
//!
//! Compares, in the same run and on the same bytes:
//! - `wisp`: [`wisp::protocol::mask::unmask`], the fast path the server uses;
//! - `bytewise`: [`wisp::protocol::mask::unmask_bytewise`], a byte-at-a-time loop;
//! - `fastwebsockets`: `fastwebsockets::unmask` 0.10 (tungstenite's `u32`-word
//!   algorithm; it has no phase argument, so it appears only at phase 0).
//!
//! Each size is run on a 64-byte-aligned slice (`align0`) and on slices that
//! start 1 and 3 bytes later (`align1`, `align3`). The `phase` group passes a
//! non-zero `offset` (the key rotated, as for the second piece of a payload
//! split over two reads). The buffer is unmasked in place again and again:
//! XOR is its own inverse, so every iteration does the same work.
//!
//! Run: `cargo bench --bench unmask`. Numbers: `docs/benchmarks.md`.

#[macro_use]
mod common;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use wisp::protocol::mask::{unmask, unmask_bytewise};

const SIZES: [(usize, &str); 3] = [(16, "16B"), (1024, "1KiB"), (64 * 1024, "64KiB")];
const ALIGNS: [usize; 3] = [0, 1, 3];
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A buffer whose first byte is 64-byte aligned (a cache line), with room for
/// the largest size at the largest misalignment.
#[repr(C, align(64))]
struct Aligned([u8; 64 * 1024 + 64]);

fn aligned_buffer() -> Box<Aligned> {
    let mut b = Box::new(Aligned([0; 64 * 1024 + 64]));
    for (i, x) in b.0.iter_mut().enumerate() {
        *x = (i * 31 + 7) as u8;
    }
    b
}

fn bench_unmask(c: &mut Criterion) {
    let mut buf = aligned_buffer();
    for (size, label) in SIZES {
        let mut group = c.benchmark_group(format!("unmask/{label}"));
        group.throughput(Throughput::Bytes(size as u64));
        for align in ALIGNS {
            let id = |name: &str| BenchmarkId::new(name, format!("align{align}"));
            let slice = &mut buf.0[align..align + size];
            group.bench_function(id("wisp"), |b| {
                b.iter(|| unmask(black_box(&mut *slice), black_box(KEY), 0))
            });
            group.bench_function(id("bytewise"), |b| {
                b.iter(|| unmask_bytewise(black_box(&mut *slice), black_box(KEY), 0))
            });
            group.bench_function(id("fastwebsockets"), |b| {
                b.iter(|| fastwebsockets::unmask(black_box(&mut *slice), black_box(KEY)))
            });
        }
        group.finish();
    }
}

/// A non-zero key phase: `offset` 1 and 3 on an unaligned slice (align1).
fn bench_phase(c: &mut Criterion) {
    let mut buf = aligned_buffer();
    for (size, label) in SIZES {
        let mut group = c.benchmark_group(format!("unmask-phase/{label}"));
        group.throughput(Throughput::Bytes(size as u64));
        let slice = &mut buf.0[1..1 + size];
        for offset in [1usize, 3] {
            let param = format!("align1-offset{offset}");
            group.bench_function(BenchmarkId::new("wisp", &param), |b| {
                b.iter(|| unmask(black_box(&mut *slice), black_box(KEY), black_box(offset)))
            });
            group.bench_function(BenchmarkId::new("bytewise", &param), |b| {
                b.iter(|| {
                    unmask_bytewise(black_box(&mut *slice), black_box(KEY), black_box(offset))
                })
            });
        }
        group.finish();
    }
}

bench_main! {
    measure_secs = 2;
    targets = bench_unmask, bench_phase
}
