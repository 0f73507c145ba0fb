//! The HTTP surface (SPEC §3) over raw TCP: every status, HEAD, keep-alive,
//! pipelining, CORS, origins, `--no-echo`, and the command line.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Sends `req` on a fresh connection and reads one response.
fn exchange(server: &Server, req: &[u8]) -> (Response, HttpConn) {
    let mut c = HttpConn::connect(server.addr);
    c.send(req);
    let r = c.read_response();
    (r, c)
}

fn status_of(server: &Server, req: &[u8]) -> Response {
    exchange(server, req).0
}

#[test]
fn plain_routes_answer_200() {
    let server = Server::start(&[]);
    let page = server.get("/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(String::from_utf8_lossy(&page.body).contains("<html") || !page.body.is_empty());
    for path in ["/healthz", "/messages", "/rooms", "/rooms/lobby/messages"] {
        let r = server.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.head);
        r.json();
    }
    let h = server.healthz();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["connections"], 0);
    assert_eq!(h["rooms"], 0);
    assert!(h["uptime_s"].is_number());
    let metrics = String::from_utf8(server.get("/metrics").body).unwrap();
    for name in [
        "wisp_connections_active",
        "wisp_connections_total",
        "wisp_messages_received_total",
        "wisp_messages_sent_total",
        "wisp_bytes_received_total",
        "wisp_bytes_sent_total",
        "wisp_history_messages",
        "wisp_rooms_active",
        "wisp_messages_expired_total",
        "wisp_rate_limited_total",
        "wisp_slow_consumers_total",
        "wisp_handshake_failures_total",
        "wisp_protocol_errors_total",
        "wisp_handshake_timeouts_total",
        "wisp_idle_timeouts_total",
        "wisp_connections_rejected_total",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(name)),
            "/metrics lacks {name}"
        );
    }
}

#[test]
fn malformed_request_is_400_and_closed() {
    let server = Server::start(&[]);
    for req in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET noslash HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
    ] {
        let (r, mut c) = exchange(&server, req);
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(req));
        assert!(c.closed_within(Duration::from_secs(3)), "400 then close");
    }
    // A bad key on an upgrade.
    let r = status_of(
        &server,
        upgrade_request("/echo", "")
            .replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=")
            .as_bytes(),
    );
    assert_eq!(r.status, 400);
}

#[test]
fn unknown_path_is_404() {
    let server = Server::start(&[]);
    for path in [
        "/nope",
        "/ws/a/b/c",
        "/ws/onlyroom",
        "/rooms/x/y",
        "/echo/more",
    ] {
        assert_eq!(server.get(path).status, 404, "{path}");
    }
    let r = status_of(&server, upgrade_request("/ws/onlyroom", "").as_bytes());
    assert_eq!(r.status, 404);
}

#[test]
fn other_methods_are_405_with_allow() {
    let server = Server::start(&[]);
    for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
        let r = status_of(
            &server,
            format!("{method} /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(r.status, 405, "{method}");
        let allow = r.header("allow").expect("Allow header");
        assert!(allow.contains("GET") && allow.contains("HEAD"), "{allow}");
    }
}

#[test]
fn wrong_websocket_version_is_426() {
    let server = Server::start(&[]);
    let r = status_of(
        &server,
        upgrade_request("/echo", "")
            .replace("Version: 13", "Version: 8")
            .as_bytes(),
    );
    assert_eq!(r.status, 426);
    assert_eq!(r.header("sec-websocket-version"), Some("13"));
    // A WebSocket path without Upgrade at all.
    let r = status_of(&server, b"GET /ws HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 426);
    assert_eq!(r.header("sec-websocket-version"), Some("13"));
}

#[test]
fn oversize_head_and_too_many_headers_are_431() {
    let server = Server::start(&[]);
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let (r, mut c) = exchange(&server, big.as_bytes());
    assert_eq!(r.status, 431);
    assert!(c.closed_within(Duration::from_secs(3)));
    // Never ending: no CRLFCRLF at all, just more than 8 KiB.
    let mut c = HttpConn::connect(server.addr);
    let _ = c.try_send(format!("GET /{} ", "b".repeat(10_000)).as_bytes());
    assert_eq!(c.read_head().status, 431);
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = status_of(
        &server,
        format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes(),
    );
    assert_eq!(r.status, 431);
    // Just under the limit is fine.
    let ok = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(7000)
    );
    assert_eq!(status_of(&server, ok.as_bytes()).status, 200);
}

#[test]
fn head_has_no_body_and_the_same_content_length() {
    let server = Server::start(&[]);
    for path in ["/", "/rooms"] {
        let get = server.get(path);
        let mut c = HttpConn::connect(server.addr);
        c.send(format!("HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let head = c.read_head();
        assert_eq!(head.status, 200);
        assert_eq!(head.content_length(), get.content_length(), "{path}");
        assert!(get.content_length().unwrap() > 0);
        // No body follows: the next response on this connection parses at once.
        c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let next = c.read_response();
        assert_eq!(next.status, 200, "bytes after a HEAD answer");
        next.json();
    }
}

#[test]
fn keep_alive_serves_two_requests_on_one_socket() {
    let server = Server::start(&[]);
    let mut c = HttpConn::connect(server.addr);
    c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let a = c.read_response();
    assert_eq!(a.status, 200);
    assert!(
        !c.closed_within(Duration::from_millis(200)),
        "closed after a keep-alive answer"
    );
    c.send(b"GET /rooms HTTP/1.1\r\nHost: t\r\n\r\n");
    let b = c.read_response();
    assert_eq!(b.status, 200);
    b.json();
    c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    assert!(
        c.closed_within(Duration::from_secs(3)),
        "Connection: close honoured"
    );
    // HTTP/1.0 without keep-alive: closed after one answer.
    let (r, mut c) = exchange(&server, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(c.closed_within(Duration::from_secs(3)));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = Server::start(&[]);
    let mut c = HttpConn::connect(server.addr);
    c.send(
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n\
HEAD / HTTP/1.1\r\nHost: t\r\n\r\n\
GET /nope HTTP/1.1\r\nHost: t\r\n\r\n\
GET /rooms HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let a = c.read_response();
    assert_eq!(a.status, 200);
    a.json();
    let b = c.read_head();
    assert_eq!(b.status, 200);
    assert!(b.header("content-type").unwrap().starts_with("text/html"));
    let n = c.read_response();
    assert_eq!(n.status, 404);
    let d = c.read_response();
    assert_eq!(d.status, 200);
    assert!(d.json()["rooms"].is_array());
    assert!(c.closed_within(Duration::from_secs(3)));
}

#[test]
fn pipelined_upgrade_after_a_plain_request() {
    let server = Server::start(&[]);
    let mut c = HttpConn::connect(server.addr);
    c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    let mut raw = RawWs::connect_from(c, server.addr, "/echo");
    raw.send_text("after keep-alive");
    assert_eq!(raw.recv_text(), "after keep-alive");
}

#[test]
fn json_answers_carry_cors_and_content_type() {
    let server = Server::start(&[]);
    for path in ["/healthz", "/messages", "/rooms", "/rooms/a/messages"] {
        let r = server.get(path);
        assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{path}");
        assert!(
            r.header("content-type")
                .unwrap()
                .starts_with("application/json"),
            "{path}"
        );
    }
}

#[test]
fn allowed_origin_refuses_others_with_403() {
    let server = Server::start(&[
        "--allowed-origin",
        "http://good.example",
        "--allowed-origin",
        "https://also.example",
    ]);
    let bad = status_of(
        &server,
        upgrade_request("/echo", "Origin: http://evil.example\r\n").as_bytes(),
    );
    assert_eq!(bad.status, 403);
    for origin in ["http://good.example", "https://also.example"] {
        let mut c = HttpConn::connect(server.addr);
        c.send(upgrade_request("/ws", &format!("Origin: {origin}\r\n")).as_bytes());
        assert_eq!(c.read_head().status, 101, "{origin}");
    }
    assert!(server.metric("wisp_handshake_failures_total") >= 1.0);
}

#[test]
fn no_echo_turns_echo_into_404() {
    let server = Server::start(&["--no-echo"]);
    let r = status_of(&server, upgrade_request("/echo", "").as_bytes());
    assert_eq!(r.status, 404);
    let mut c = HttpConn::connect(server.addr);
    c.send(upgrade_request("/ws", "").as_bytes());
    assert_eq!(c.read_head().status, 101);
}

#[test]
fn upgrade_answer_is_rfc_6455() {
    let server = Server::start(&[]);
    let mut c = HttpConn::connect(server.addr);
    c.send(upgrade_request("/echo", "").as_bytes());
    let r = c.read_head();
    assert_eq!(r.status, 101);
    // RFC 6455 §1.3 example key.
    assert_eq!(
        r.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert!(r
        .header("upgrade")
        .unwrap()
        .eq_ignore_ascii_case("websocket"));
}

/// Runs `wisp ARGS` with extra environment variables; (exit code, stdout, stderr).
/// Bounded: a wrong "bad value" that starts the server is killed after 10 s.
fn run_wisp_env(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wisp"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("WISP_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(envs.iter().copied());
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status.code().unwrap_or(-1),
        out_t.join().unwrap(),
        err_t.join().unwrap(),
    )
}

fn run_wisp(args: &[&str]) -> (i32, String, String) {
    run_wisp_env(args, &[])
}

#[test]
fn bad_option_values_exit_2_with_one_line_naming_the_option() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    for (args, name) in [
        (&["--bind", "nowhere"][..], "--bind"),
        (&["--bind", busy_addr.as_str()], "--bind"),
        (&["--history-ttl", "0"], "--history-ttl"),
        (&["--history-max", "-5"], "--history-max"),
        (&["--ping-interval", "0"], "--ping-interval"),
        (&["--idle-timeout", "abc"], "--idle-timeout"),
        (
            &["--ping-interval", "5", "--idle-timeout", "5"],
            "--idle-timeout",
        ),
        (&["--handshake-timeout", "0"], "--handshake-timeout"),
        (&["--max-message-bytes", "x"], "--max-message-bytes"),
        (&["--max-connections", "0"], "--max-connections"),
        (&["--max-outbound-bytes", "10"], "--max-outbound-bytes"),
        (&["--rate-limit", "5"], "--rate-limit"),
        (&["--rate-limit", "5/0"], "--rate-limit"),
        (&["--log", "loud"], "--log"),
        (&["--no-such-option"], "--no-such-option"),
    ] {
        let mut argv = args.to_vec();
        if name != "--bind" {
            argv.extend(["--bind", "127.0.0.1:0"]);
        }
        let (code, _, stderr) = run_wisp(&argv);
        assert_eq!(code, 2, "{args:?}: exit {code}, stderr {stderr:?}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line expected: {stderr:?}");
        assert!(lines[0].contains(name), "{args:?}: {stderr:?}");
    }
    drop(busy);
}

#[test]
fn help_exits_0_and_lists_the_options() {
    let (code, stdout, _) = run_wisp(&["--help"]);
    assert_eq!(code, 0);
    for opt in [
        "--bind",
        "--history-ttl",
        "--ping-interval",
        "--idle-timeout",
        "--max-message-bytes",
        "--max-connections",
        "--max-outbound-bytes",
        "--rate-limit",
        "--allowed-origin",
        "--no-echo",
        "--log",
    ] {
        assert!(stdout.contains(opt), "--help lacks {opt}");
    }
}

#[test]
fn options_read_wisp_environment_variables() {
    let (code, _, stderr) = run_wisp_env(&["--bind", "127.0.0.1:0"], &[("WISP_HISTORY_TTL", "0")]);
    assert_eq!(code, 2, "WISP_HISTORY_TTL=0 refused: {stderr}");
    assert!(
        stderr.contains("history-ttl") || stderr.contains("HISTORY_TTL"),
        "{stderr}"
    );
    // An environment variable takes effect: WISP_NO_ECHO turns /echo off.
    let server = Server::start_env(&[], &[("WISP_NO_ECHO", "true")]);
    let r = status_of(&server, upgrade_request("/echo", "").as_bytes());
    assert_eq!(r.status, 404, "WISP_NO_ECHO=true");
    let (code, _, stderr) = run_wisp_env(
        &["--bind", "127.0.0.1:0", "--log", "loud"],
        &[("WISP_LOG", "info")],
    );
    assert_eq!(code, 2, "the command line wins over WISP_LOG: {stderr}");
}
