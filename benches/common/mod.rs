//! What every bench file here shares: how long criterion warms up and
//! measures. (A module folder, so Cargo does not take it for a bench.)

/// `criterion_main!` for this file's `targets`: one group, one second of
/// warm-up and `secs` seconds of measurement per benchmark.
macro_rules! bench_main {
    (measure_secs = $secs:expr; targets = $($target:path),+ $(,)?) => {
        criterion::criterion_group! {
            name = benches;
            config = criterion::Criterion::default()
                .warm_up_time(std::time::Duration::from_secs(1))
                .measurement_time(std::time::Duration::from_secs($secs));
            targets = $($target),+
        }
        criterion::criterion_main!(benches);
    };
}

/// An upgrade request for `target` as Chrome sends it (13 header lines, 600-odd bytes): what
/// `handshake.rs` and `auth.rs` parse.
#[allow(dead_code)] // not every bench upgrades
pub fn browser_upgrade(target: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\n\
Host: chat.example.com\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://chat.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-GB,en-US;q=0.9,en;q=0.8\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    )
    .into_bytes()
}
