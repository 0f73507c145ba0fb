//! `wisp client`: the terminal client built on the project's own client side,
//! driven like a person would (lines on stdin, events on stdout), against the
//! real daemon and next to a `tungstenite` peer in the same room.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{read_event, ws_connect, Server, TIMEOUT};
use tungstenite::Message;

#[test]
fn terminal_client_chats_with_another_peer() {
    let server = Server::start(&[]);
    let mut bob = ws_connect(&server, "/ws/lobby/bob");
    assert_eq!(read_event(&mut bob)["type"], "welcome");

    let mut alice = Command::new(env!("CARGO_BIN_EXE_wisp"))
        .args(["client", &server.ws_url("/ws/lobby/alice")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("wisp client starts");
    let (tx, rx) = mpsc::channel();
    let stdout = alice.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = |what: &str| -> serde_json::Value {
        let line = rx
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|_| panic!("no {what} line from wisp client"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{what}: {e}: {line}"))
    };
    let w = next("welcome");
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["client_id"], "alice");
    assert_eq!(w["users"], serde_json::json!(["bob", "alice"]));

    // Bob sees alice join, then her line typed on stdin.
    let join = read_event(&mut bob);
    assert_eq!(
        (join["type"].as_str(), join["client_id"].as_str()),
        (Some("join"), Some("alice"))
    );
    let stdin = alice.stdin.as_mut().unwrap();
    writeln!(stdin, "hello from a terminal").unwrap();
    let msg = read_event(&mut bob);
    assert_eq!(msg["content"], "hello from a terminal");
    assert_eq!(msg["client_id"], "alice");
    let echoed = next("own message");
    assert_eq!(echoed["id"], msg["id"]);

    // Bob answers; alice's terminal prints it.
    bob.send(Message::text("hi alice")).unwrap();
    let reply = next("bob's reply");
    assert_eq!(
        (reply["client_id"].as_str(), reply["content"].as_str()),
        (Some("bob"), Some("hi alice"))
    );

    // End of input: the client closes cleanly and bob sees the leave.
    drop(alice.stdin.take());
    let leave = loop {
        let v = read_event(&mut bob);
        if v["type"] == "leave" {
            break v;
        }
    };
    assert_eq!(leave["client_id"], "alice");
    let deadline = std::time::Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(s) = alice.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "wisp client did not exit after stdin closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn terminal_client_reports_a_refused_handshake() {
    let server = Server::start(&[]);
    let out = Command::new(env!("CARGO_BIN_EXE_wisp"))
        .args(["client", &server.ws_url("/nowhere")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn terminal_client_says_it_closed_at_end_of_input() {
    let server = Server::start(&[]);
    let out = Command::new(env!("CARGO_BIN_EXE_wisp"))
        .args(["client", &server.ws_url("/ws/lobby/alice")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(err.contains("end of input: closed the connection"), "{err}");
    assert!(!err.contains("closed by server"), "{err}");
}

#[test]
fn terminal_client_without_a_url_names_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_wisp"))
        .arg("client")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("<URL>"), "{err}");
}

#[test]
fn bad_options_say_what_is_wrong_in_one_line() {
    for (args, want) in [
        (&["--bind", "127.0.0.1"][..], "a port is needed"),
        (&["--allowed-origin", "example.com"], "scheme://host[:port]"),
        (&["--redis", "redis//127.0.0.1"], "expected a URL"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_wisp"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains(args[0]) && err.contains(want),
            "{args:?}: {err}"
        );
    }
}
