//! Graceful shutdown (SPEC §6): SIGTERM/SIGINT stop accepting, send close
//! 1001 to every WebSocket peer, wait at most 5 s, and exit 0.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use wisp::protocol::OpCode;

/// Every kind of peer at once: echo, global, a room, a raw peer, plus a
/// half-sent HTTP request and an idle keep-alive connection.
struct Crowd {
    echo: Ws,
    global: Ws,
    room_a: Ws,
    room_b: Ws,
    raw: RawWs,
    half_open: HttpConn,
    keep_alive: HttpConn,
}

fn crowd(server: &Server) -> Crowd {
    let mut echo = ws_connect(server, "/echo");
    echo.send(tungstenite::Message::Text("x".into())).unwrap();
    ws_read(&mut echo);
    let global = ws_connect(server, "/ws");
    let mut room_a = ws_connect(server, "/ws/r/a");
    assert_eq!(read_event(&mut room_a)["type"], "welcome");
    let mut room_b = ws_connect(server, "/ws/r/b");
    assert_eq!(read_event(&mut room_b)["type"], "welcome");
    assert_eq!(read_event(&mut room_a)["type"], "join");
    let raw = RawWs::connect(server, "/echo");
    let mut half_open = HttpConn::connect(server.addr);
    half_open.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n");
    let mut keep_alive = HttpConn::connect(server.addr);
    keep_alive.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(keep_alive.read_response().status, 200);
    assert_eq!(server.healthz()["connections"], 5);
    Crowd {
        echo,
        global,
        room_a,
        room_b,
        raw,
        half_open,
        keep_alive,
    }
}

fn graceful(sig: i32) {
    let mut server = Server::start(&[]);
    let mut c = crowd(&server);
    let signalled = Instant::now();
    server.signal(sig);
    for (name, mut ws) in [
        ("echo", c.echo),
        ("global", c.global),
        ("room a", c.room_a),
        ("room b", c.room_b),
    ] {
        // No leave events are owed; the first thing seen is the close.
        assert_eq!(ws_read_close(&mut ws), 1001, "{name}");
        ws_expect_closed(&mut ws);
        // Dropping the client sends our FIN, which the server waits for.
    }
    assert_eq!(c.raw.recv_close(), Some(1001), "raw");
    c.raw.send(OpCode::Close, &1001u16.to_be_bytes());
    c.raw.expect_eof(Duration::from_secs(6));
    drop(c.raw);
    assert!(c.half_open.closed_within(Duration::from_secs(6)));
    assert!(c.keep_alive.closed_within(Duration::from_secs(6)));
    let status = server
        .wait_exit(Duration::from_secs(6))
        .expect("wisp still running 6 s after the signal");
    assert!(status.success(), "exit status {status:?}");
    // Every peer answered, so there was no reason to wait out the 5 s.
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "exit took {:?} although every peer answered",
        signalled.elapsed()
    );
    let log = server.log().join("\n").to_lowercase();
    assert!(
        log.contains("shut") || log.contains("stop"),
        "no shutdown line: {log}"
    );
}

#[test]
fn sigterm_closes_every_peer_with_1001_and_exits_0() {
    graceful(libc::SIGTERM);
}

#[test]
fn sigint_closes_every_peer_with_1001_and_exits_0() {
    graceful(libc::SIGINT);
}

#[test]
fn peers_that_never_answer_do_not_hold_the_exit_past_5s() {
    let mut server = Server::start(&[]);
    let mut silent: Vec<RawWs> = (0..3).map(|_| RawWs::connect(&server, "/echo")).collect();
    let mut half_open = HttpConn::connect(server.addr);
    half_open.send(b"GET / HTTP/1.1\r\nHo");
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    for raw in silent.iter_mut() {
        assert_eq!(raw.recv_close(), Some(1001));
        // The server's FIN follows its close; we keep our side open.
    }
    assert!(half_open.closed_within(Duration::from_secs(6)));
    let status = server
        .wait_exit(Duration::from_secs(6))
        .expect("wisp still running 6 s after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(6), "exit took {took:?}");
    drop(silent);
}

#[test]
fn no_new_connections_once_shutting_down() {
    let mut server = Server::start(&[]);
    // A peer that never answers keeps the daemon in its 5 s grace period.
    let mut silent = RawWs::connect(&server, "/echo");
    server.signal(libc::SIGTERM);
    assert_eq!(silent.recv_close(), Some(1001));
    match TcpStream::connect_timeout(&server.addr, TIMEOUT) {
        Err(_) => {} // refused: the listener is gone
        Ok(stream) => {
            let mut c = HttpConn::from_stream(stream);
            if c.try_send(upgrade_request("/echo", "").as_bytes()).is_ok() {
                let closed = c.closed_within(Duration::from_secs(7));
                assert!(closed, "a connection made during shutdown was left hanging");
                assert!(
                    !String::from_utf8_lossy(&c.buf).starts_with("HTTP/1.1 101"),
                    "upgraded during shutdown"
                );
            }
        }
    }
    let status = server.wait_exit(Duration::from_secs(7)).expect("exit");
    assert!(status.success());
}

#[test]
fn sigterm_with_no_connections_exits_at_once() {
    let mut server = Server::start(&[]);
    let t = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(6)).expect("exit");
    assert!(status.success());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "idle exit took {:?}",
        t.elapsed()
    );
}
