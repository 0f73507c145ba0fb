//! The HTTP upgrade: a typical browser request (about 500 bytes, the headers
//! Chrome sends to `/ws/{room}/{client}`) turned into a `101` answer.
//!
//! - `wisp`: [`handshake::parse`] + [`handshake::check_upgrade`] (key check,
//!   SHA-1, base64) + [`handshake::switching_protocols`].
//! - `tungstenite`: the same steps in `tungstenite` 0.24's server handshake:
//!   `Request::try_parse` (httparse into an `http::Request`, every header
//!   copied into a `HeaderMap`), `create_response` (its checks and accept
//!   key) and `write_response` into a `Vec`.
//! - `httparse`: only `httparse::Request::parse` with 32 header slots, the
//!   floor under both (no checks, no SHA-1, no answer).
//!
//! Run: `cargo bench --bench handshake`. Numbers: `docs/benchmarks.md`.

#[macro_use]
mod common;

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use tungstenite::handshake::machine::TryParse;
use wisp::protocol::handshake;
use wisp::protocol::Decoded;

/// A browser's upgrade to a room, resuming (the request line Chrome would send).
const TARGET: &str = "/ws/general/alice?since=41&epoch=k3v9q2";

fn bench_handshake(c: &mut Criterion) {
    let request = common::browser_upgrade(TARGET);
    let request = request.as_slice();
    let mut group = c.benchmark_group(format!("handshake/{}B", request.len()));
    group.throughput(Throughput::Bytes(request.len() as u64));
    group.bench_function("wisp", |b| {
        b.iter(|| {
            let Ok(Decoded::Done((req, _len))) = handshake::parse(black_box(request)) else {
                panic!("complete request");
            };
            let accept = handshake::check_upgrade(&req).expect("valid upgrade");
            handshake::switching_protocols(&accept, None)
        })
    });
    group.bench_function("tungstenite", |b| {
        b.iter(|| {
            let Ok(Some((_len, req))) =
                tungstenite::handshake::server::Request::try_parse(black_box(request))
            else {
                panic!("complete request");
            };
            let resp = tungstenite::handshake::server::create_response(&req).expect("valid");
            let mut out = Vec::with_capacity(160);
            tungstenite::handshake::server::write_response(&mut out, &resp).expect("vec");
            out
        })
    });
    group.bench_function("httparse", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            let status = req.parse(black_box(request)).expect("valid");
            black_box(req.headers.len());
            status.is_complete()
        })
    });
    group.finish();
}

bench_main! {
    measure_secs = 2;
    targets = bench_handshake
}
