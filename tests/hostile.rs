//! Hostile peers (issue 4): slowloris, a client that never reads, random bytes
//! before and after the upgrade, malformed frames, connection limits and
//! silent peers. After each, `/healthz` answers and the other clients lost
//! nothing (see [`Bystanders`]).

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;
use wisp::protocol::{CloseCode, Role, WebSocket};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[test]
fn slowloris_half_heads_are_closed_while_chat_goes_on() {
    let server = Server::start(&["--handshake-timeout", "1", "--rate-limit", "0"]);
    let mut chat = Bystanders::join(&server, "slow");
    chat.check();

    let started = Instant::now();
    let mut lorises: Vec<HttpConn> = (0..300)
        .map(|i| {
            let mut c = HttpConn::connect(server.addr);
            let half = if i % 2 == 0 {
                "GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: ".to_string()
            } else {
                upgrade_request("/ws", "")[..40].to_string()
            };
            c.send(half.as_bytes());
            c
        })
        .collect();

    // Chat through the whole episode.
    while started.elapsed() < Duration::from_millis(1500) {
        chat.check();
        thread::sleep(Duration::from_millis(50));
    }
    // Every half-sent connection is closed by ~2-3 s after it opened.
    let deadline = started + Duration::from_secs(4);
    for (i, c) in lorises.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            c.closed_within(left.max(Duration::from_millis(10))),
            "half-open request {i} still open after {:?}",
            started.elapsed()
        );
    }
    chat.check();
    assert!(server.metric("wisp_handshake_timeouts_total") >= 300.0);
    assert_eq!(server.healthz()["connections"], 2);
    chat.check();
}

#[test]
fn handshake_timeout_does_not_cut_completed_websockets() {
    let server = Server::start(&["--handshake-timeout", "1"]);
    let mut raw = RawWs::connect(&server, "/echo");
    thread::sleep(Duration::from_millis(2200));
    raw.send_text("alive");
    assert_eq!(raw.recv_text(), "alive");
    // A keep-alive HTTP connection that sends nothing after its first
    // answer is closed like any other incomplete request head (or kept):
    // either way the server still answers.
    assert_eq!(server.get("/healthz").status, 200);
}

/// A flooding sender over a raw socket: frames are written from this thread
/// while a helper thread drains (and counts) what the server sends back.
fn flood(server: &Server, room: &str, n: usize, size: usize) {
    let raw = RawWs::connect(server, &format!("/ws/{room}/flooder"));
    let mut writer = raw.conn.stream.try_clone().unwrap();
    let drain = thread::spawn(move || {
        let mut raw = raw;
        let mut got = 0;
        while got < n {
            match raw.recv() {
                Some(Frame::Text(t)) if t.contains("\"type\":\"message\"") => got += 1,
                Some(_) => {}
                None => panic!("the flooder was disconnected after {got} messages"),
            }
        }
    });
    let mut rng = wisp::protocol::client::MaskRng::from_os();
    let body = "x".repeat(size);
    let mut batch = Vec::new();
    for i in 0..n {
        let text = format!("{i:06} {body}");
        wisp::protocol::client::encode_masked(
            &mut batch,
            wisp::protocol::OpCode::Text,
            text.as_bytes(),
            rng.mask(),
        );
        if i % 64 == 63 || i + 1 == n {
            use std::io::Write;
            writer.write_all(&batch).unwrap();
            batch.clear();
        }
    }
    drain.join().expect("flooder drain");
}

/// A fast reader: every `message` event, ids strictly consecutive, contents in order.
fn fast_reader(mut ws: Ws, n: usize) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut last: Option<u64> = None;
        let mut seen = 0;
        while seen < n {
            let ev = read_event(&mut ws);
            if ev["type"] != "message" {
                continue;
            }
            let id = ev["id"].as_u64().unwrap();
            if let Some(last) = last {
                assert_eq!(id, last + 1, "fast reader skipped an id");
            }
            let content = ev["content"].as_str().unwrap();
            assert!(
                content.starts_with(&format!("{seen:06} ")),
                "message {seen} out of order: {}",
                &content[..12.min(content.len())]
            );
            last = Some(id);
            seen += 1;
        }
    })
}

#[test]
fn a_client_that_never_reads_is_closed_1008_and_nobody_else_loses_anything() {
    let server = Server::start(&[
        "--max-outbound-bytes",
        "65536",
        "--rate-limit",
        "0",
        "--log",
        "debug",
    ]);
    let mut bystanders = Bystanders::join(&server, "quiet");

    // The non-reader: a tiny receive buffer, joins the flooded room, never reads.
    let stream = connect_from(LOCAL, server.addr, Some(4096)).unwrap();
    let mut sleeper = RawWs::connect_from(
        HttpConn::from_stream(stream),
        server.addr,
        "/ws/flood/sleeper",
    );

    let mut r1 = ws_connect(&server, "/ws/flood/r1");
    assert_eq!(read_event(&mut r1)["type"], "welcome");
    let mut r2 = ws_connect(&server, "/ws/flood/r2");
    assert_eq!(read_event(&mut r2)["type"], "welcome");
    const N: usize = 3000;
    let h1 = fast_reader(r1, N);
    let h2 = fast_reader(r2, N);
    let flooded = std::panic::catch_unwind(|| flood(&server, "flood", N, 1000));
    let (r1, r2) = (h1.join(), h2.join());
    if flooded.is_err() || r1.is_err() || r2.is_err() {
        let mut server = server;
        panic!(
            "flood failed (flooder ok: {}, readers ok: {} {}); server exit: {:?}; log: {:#?}",
            flooded.is_ok(),
            r1.is_ok(),
            r2.is_ok(),
            server.wait_exit(Duration::from_millis(100)),
            server.log()
        );
    }

    assert!(
        server.wait_metric("wisp_slow_consumers_total", 1.0, Duration::from_secs(5)) >= 1.0,
        "no slow consumer counted"
    );
    let rss = server.rss_kib();
    assert!(rss < 64 * 1024, "server RSS {rss} KiB after the flood");

    // The sleeper wakes up: what it finds ends in close 1008 or plain EOF.
    let mut messages = 0;
    loop {
        match sleeper.recv() {
            Some(Frame::Close(code, _)) => {
                assert_eq!(code, Some(1008));
                break;
            }
            Some(Frame::Text(_)) => messages += 1,
            Some(_) => {}
            None => break,
        }
    }
    assert!(
        messages < N,
        "the sleeper got everything ({messages}): never cut"
    );
    bystanders.check();
    assert!(server.healthz()["status"] == "ok");
}

#[test]
fn random_bytes_before_the_upgrade_get_400_and_close() {
    let server = Server::start(&[]);
    let mut bystanders = Bystanders::join(&server, "r1");
    for seed in 1..=20u64 {
        let mut bytes = Rng(seed).bytes(1500);
        // Keep it a request that fails to parse rather than one waiting for
        // more (a leading byte that is no token character).
        bytes[0] = b'\x01';
        let mut c = HttpConn::connect(server.addr);
        let _ = c.try_send(&bytes);
        let r = c.read_head();
        assert_eq!(r.status, 400, "seed {seed}");
        assert!(c.closed_within(Duration::from_secs(3)), "seed {seed}");
    }
    // Garbage with a valid-looking start: a bad request line and headers.
    let mut c = HttpConn::connect(server.addr);
    let mut bytes = b"GET / HTTP/1.1\r\n".to_vec();
    bytes.extend(Rng(99).bytes(400).iter().map(|b| b | 0x80));
    bytes.extend_from_slice(b"\r\n\r\n");
    let _ = c.try_send(&bytes);
    assert_eq!(c.read_head().status, 400);
    bystanders.check();
    assert_eq!(server.healthz()["connections"], 2);
}

/// The close code wisp's own decoder gives `bytes` (server role), or `None`
/// when they are not (yet) a protocol error.
fn expected_close(bytes: &[u8], max: usize) -> Option<u16> {
    let mut ws = WebSocket::new(Role::Server, max);
    let mut buf = bytes.to_vec();
    loop {
        match ws.read(&mut buf) {
            Err(e) => return Some(CloseCode::from(&e).as_u16()),
            Ok((0, None)) => return None,
            Ok((n, _)) => {
                buf.drain(..n);
            }
        }
    }
}

#[test]
fn random_bytes_after_the_upgrade_close_with_a_protocol_code() {
    let server = Server::start(&[]);
    let mut bystanders = Bystanders::join(&server, "r2");
    let mut tested = 0;
    let mut codes = std::collections::BTreeSet::new();
    for seed in 1..=200u64 {
        let bytes = Rng(seed).bytes(2000);
        let Some(code) = expected_close(&bytes, 65536) else {
            continue;
        };
        for path in ["/echo", "/ws", "/ws/noise/n"] {
            let mut raw = RawWs::connect(&server, path);
            let _ = raw.conn.try_send(&bytes);
            let got = loop {
                match raw.recv() {
                    Some(Frame::Close(c, _)) => break c,
                    Some(_) => {}
                    None => panic!("seed {seed} {path}: EOF without close"),
                }
            };
            assert_eq!(got, Some(code), "seed {seed} {path}");
            assert!(
                [1002, 1007, 1009].contains(&code),
                "seed {seed}: unexpected code {code}"
            );
            raw.expect_eof(Duration::from_secs(6));
        }
        codes.insert(code);
        tested += 1;
        if tested == 12 {
            break;
        }
    }
    assert!(tested >= 10, "too few erroring seeds");
    assert!(codes.contains(&1002));
    bystanders.check();
    let mut echo = ws_connect(&server, "/echo");
    echo.send(Message::Text("fine".into())).unwrap();
    assert_eq!(ws_read(&mut echo), Message::Text("fine".into()));
    assert!(server.metric("wisp_protocol_errors_total") >= 30.0);
}

#[test]
fn oversize_and_malformed_frames_leave_others_untouched() {
    let server = Server::start(&["--max-message-bytes", "4096"]);
    let mut bystanders = Bystanders::join(&server, "frames");
    let huge_len = {
        let mut h = vec![0x81, 0xFF];
        h.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        h.extend_from_slice(&[9, 9, 9, 9]);
        h
    };
    let top_bit_len = {
        let mut h = vec![0x82, 0xFF];
        h.extend_from_slice(&u64::MAX.to_be_bytes());
        h.extend_from_slice(&[9, 9, 9, 9]);
        h
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("oversize text", masked(0x81, &[b'a'; 4097]), 1009),
        ("huge length", huge_len, 1009),
        ("length top bit", top_bit_len, 1002),
        (
            "oversize fragmented",
            [masked(0x02, &[0; 3000]), masked(0x80, &[0; 3000])].concat(),
            1009,
        ),
        ("continuation first", masked(0x80, b"x"), 1002),
        (
            "text inside text",
            [masked(0x01, b"a"), masked(0x81, b"b")].concat(),
            1002,
        ),
        ("rsv2", masked(0xA1, b"x"), 1002),
        ("reserved control", masked(0x8C, b""), 1002),
        ("long ping", masked(0x89, &[1; 126]), 1002),
        ("fragmented close", masked(0x08, b""), 1002),
        ("unmasked", raw_frame(0x82, b"x", None), 1002),
        ("bad utf8 reason", masked(0x88, b"\x03\xe8\xc3\x28"), 1007),
        ("bad utf8 text", masked(0x81, b"\xf8\x88\x80\x80\x80"), 1007),
    ];
    for (name, bytes, code) in cases {
        for path in ["/echo", "/ws/frames/mallory"] {
            let mut raw = RawWs::connect(&server, path);
            raw.send_raw(&bytes);
            assert_eq!(raw.recv_close(), Some(code), "{name} on {path}");
            raw.expect_eof(Duration::from_secs(6));
        }
        bystanders.check();
    }
    assert_eq!(server.healthz()["status"], "ok");
}

#[test]
fn over_max_connections_gets_503_and_a_freed_slot_is_reused() {
    let server = Server::start(&["--max-connections", "5"]);
    let mut clients: Vec<Ws> = (0..5).map(|_| ws_connect(&server, "/echo")).collect();
    for ws in clients.iter_mut() {
        ws.send(Message::Text("hi".into())).unwrap();
        assert_eq!(ws_read(ws), Message::Text("hi".into()));
    }
    // The sixth: 503, then closed.
    let mut c = HttpConn::connect(server.addr);
    let _ = c.try_send(upgrade_request("/echo", "").as_bytes());
    let r = c.read_head();
    assert_eq!(r.status, 503);
    assert!(c.closed_within(Duration::from_secs(3)));
    // The five still work.
    for ws in clients.iter_mut() {
        ws.send(Message::Text("still".into())).unwrap();
        assert_eq!(ws_read(ws), Message::Text("still".into()));
    }
    // Close one; a new connection gets in (once the server has let go of it).
    let mut first = clients.remove(0);
    first.close(None).unwrap();
    ws_expect_closed(&mut first);
    drop(first);
    let mut again = None;
    assert!(
        wait_until(Duration::from_secs(3), || {
            again = try_ws_connect(&server, "/echo").ok();
            again.is_some()
        }),
        "no slot freed"
    );
    let mut again = again.unwrap();
    again.send(Message::Text("in".into())).unwrap();
    assert_eq!(ws_read(&mut again), Message::Text("in".into()));
    drop(again);
    drop(clients);
    assert!(wait_until(Duration::from_secs(3), || {
        try_ws_connect(&server, "/echo").is_ok()
    }));
    assert!(server.metric("wisp_connections_rejected_total") >= 1.0);
}

#[test]
fn silent_peer_is_dropped_while_a_reading_peer_stays() {
    let server = Server::start(&["--ping-interval", "1", "--idle-timeout", "3"]);
    let started = Instant::now();
    let mut silent = RawWs::connect(&server, "/echo");
    let silent_thread = thread::spawn(move || {
        // It receives pings and answers none; then TCP ends without a close frame.
        let mut pings = 0;
        loop {
            match silent.recv() {
                Some(Frame::Ping(_)) => pings += 1,
                Some(f) => panic!("silent peer got {f:?}"),
                None => break,
            }
        }
        (pings, started.elapsed())
    });

    let mut reader = ws_connect(&server, "/ws/heart/reader");
    assert_eq!(read_event(&mut reader)["type"], "welcome");
    reader
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut pings = 0;
    while started.elapsed() < Duration::from_secs(5) {
        match reader.read() {
            // tungstenite queues the pong; the next read or flush sends it.
            Ok(Message::Ping(_)) => pings += 1,
            Ok(m) => panic!("unexpected {m:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("the reading peer was dropped: {e}"),
        }
        let _ = reader.flush();
    }
    assert!(pings >= 1, "the reading peer was never pinged");
    reader.get_mut().set_read_timeout(Some(TIMEOUT)).unwrap();
    reader.send(Message::Text("after 5 s".into())).unwrap();
    let ev = read_event_of(&mut reader, "message");
    assert_eq!(ev["content"], "after 5 s");

    let (silent_pings, dropped_at) = silent_thread.join().unwrap();
    assert!(silent_pings >= 1, "the silent peer was never pinged");
    assert!(
        dropped_at >= Duration::from_millis(2500) && dropped_at <= Duration::from_millis(5000),
        "silent peer dropped at {dropped_at:?}, want ~3 s"
    );
    assert!(server.metric("wisp_idle_timeouts_total") >= 1.0);
    assert_eq!(server.healthz()["connections"], 1);
}

#[test]
fn per_ip_limit_refuses_the_third_from_one_address_only() {
    let server = Server::start(&["--max-connections-per-ip", "2"]);
    let mut a = ws_connect(&server, "/echo");
    let _b = ws_connect(&server, "/echo");
    let mut c = HttpConn::from_stream(connect_from(LOCAL, server.addr, None).unwrap());
    let _ = c.try_send(upgrade_request("/echo", "").as_bytes());
    assert_eq!(c.read_head().status, 503);
    assert!(c.closed_within(Duration::from_secs(3)));
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let stream = connect_from(other, server.addr, None).expect("bind 127.0.0.2");
    let mut d = RawWs::connect_from(HttpConn::from_stream(stream), server.addr, "/echo");
    d.send_text("from .2");
    assert_eq!(d.recv_text(), "from .2");
    a.send(Message::Text("from .1".into())).unwrap();
    assert_eq!(ws_read(&mut a), Message::Text("from .1".into()));
    // Freed: closing one lets 127.0.0.1 in again.
    a.close(None).unwrap();
    ws_expect_closed(&mut a);
    assert!(wait_until(Duration::from_secs(3), || {
        try_ws_connect(&server, "/echo").is_ok()
    }));
}

#[test]
fn many_idle_connections_and_healthz_counts_them() {
    let server = Server::start(&[]);
    let clients: Vec<Ws> = (0..200)
        .map(|i| ws_connect(&server, if i % 2 == 0 { "/ws" } else { "/echo" }))
        .collect();
    assert_eq!(server.healthz()["connections"], 200);
    let mut bystanders = Bystanders::join(&server, "many");
    bystanders.check();
    drop(clients);
    assert!(wait_until(Duration::from_secs(5), || server.healthz()
        ["connections"]
        == 2));
    bystanders.check();
}
