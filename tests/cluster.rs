//! Cluster mode (`--redis`, `--redis-cluster`; SPEC §7) with real `redis-server`s and real `wisp`
//! daemons.
//!
//! Each test starts its own Redis on free loopback ports (one server, or a Redis Cluster of three
//! masters with a replica each: `tests/common/redis_cluster.rs`; killed by PID at the end) and two
//! or three daemons pointed at it; clients are `tungstenite`. Without `redis-server` on the PATH
//! each test prints a notice and passes (CI installs it: `scripts/install-deps.sh`).

mod common;
#[path = "common/redis_cluster.rs"]
mod redis_cluster;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use common::Server;

/// The bound on every wait for something to happen.
const WAIT: Duration = Duration::from_secs(10);

// ---- Redis ------------------------------------------------------------------------------------

/// A `redis-server` on a loopback port, without persistence, killed by PID when dropped.
struct Redis {
    child: Option<Child>,
    port: u16,
}

impl Redis {
    /// Starts one, or `None` (with a notice) when `redis-server` is not installed.
    fn start(test: &str) -> Option<Redis> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            eprintln!(
                "SKIPPED {test}: redis-server is not installed (apt-get install redis-server)"
            );
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut r = Redis { child: None, port };
        r.restart();
        Some(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port, and waits until it answers.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "local"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// One command through `redis-cli`, its output.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// How many connections subscribe to `room`'s channel (`PUBSUB SHARDNUMSUB`).
    fn room_subscribers(&self, room: &str) -> u64 {
        let out = self.cli(&["PUBSUB", "SHARDNUMSUB", &format!("wisp:{{r:{room}}}:ch")]);
        out.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap()
    }

    /// How many scripts Redis has run by SHA-1 so far (`INFO commandstats`).
    fn evalsha_calls(&self) -> u64 {
        let out = self.cli(&["INFO", "commandstats"]);
        out.lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// SIGKILL, by PID.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `n` daemons in one cluster, each waited for until `/healthz` says Redis is up.
fn nodes(redis: &Redis, n: usize, extra: &[&str]) -> Vec<Server> {
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str(), "--log", "debug"];
    args.extend_from_slice(extra);
    let servers: Vec<Server> = (0..n).map(|_| Server::start(&args)).collect();
    for s in &servers {
        wait_redis(s, "up");
    }
    servers
}

fn wait_redis(s: &Server, want: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let h = s.healthz();
        if h["redis"] == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {} never said redis {want}: {h}; log: {:#?}",
            s.addr,
            s.log()
        );
        thread::sleep(Duration::from_millis(25));
    }
}

/// Polls `f` until it returns `Some`, at most [`WAIT`].
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(25));
    }
}

fn get_json(s: &Server, path: &str) -> Value {
    let r = s.get(path);
    assert_eq!(r.status, 200, "{path}");
    r.json()
}

/// `users` of `room` in `GET /rooms` (0 when the room is not listed).
fn room_users(s: &Server, room: &str) -> u64 {
    get_json(s, "/rooms")["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == room)
        .map_or(0, |r| r["users"].as_u64().unwrap())
}

// ---- clients ----------------------------------------------------------------------------------

struct Client {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
}

impl Client {
    fn connect(s: &Server, path: &str) -> Client {
        let (ws, _) = tungstenite::connect(s.ws_url(path)).expect("upgrade");
        if let MaybeTlsStream::Plain(t) = ws.get_ref() {
            t.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
        }
        Client { ws }
    }

    /// Joins a room and returns the client with its `welcome`.
    fn join(s: &Server, room: &str, name: &str, query: &str) -> (Client, Value) {
        let mut c = Client::connect(s, &format!("/ws/{room}/{name}{query}"));
        let w = c.next().expect("a welcome");
        assert_eq!(w["type"], "welcome", "{w}");
        (c, w)
    }

    fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    /// Sends every text in one write.
    fn send_burst(&mut self, texts: impl IntoIterator<Item = String>) {
        for t in texts {
            self.ws.write(Message::text(t)).expect("write");
        }
        self.ws.flush().expect("flush");
    }

    /// The next text frame, or `None` after [`WAIT`].
    fn next_text(&mut self) -> Option<String> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Text(t)) => return Some(t.to_string()),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        None
    }

    fn next(&mut self) -> Option<Value> {
        self.next_text()
            .map(|t| serde_json::from_str(&t).expect("JSON event"))
    }

    /// The next event of type `kind`, skipping others.
    fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let e = self
                .next()
                .unwrap_or_else(|| panic!("no {kind} event within {WAIT:?}"));
            if e["type"] == kind {
                return e;
            }
        }
    }

    /// The next `n` `message` events.
    fn messages(&mut self, n: usize) -> Vec<Value> {
        (0..n).map(|_| self.next_of("message")).collect()
    }

    fn close(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
    }
}

fn ids(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["id"].as_u64().unwrap()).collect()
}

/// (id, client, content) of each message.
fn triples(events: &[Value]) -> Vec<(u64, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["id"].as_u64().unwrap(),
                e["client_id"].as_str().unwrap().to_owned(),
                e["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The `users` of a `welcome`, sorted.
fn sorted_users(welcome: &Value) -> Vec<&str> {
    let mut users: Vec<&str> = welcome["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    users.sort_unstable();
    users
}

// ---- tests ------------------------------------------------------------------------------------

#[test]
fn messages_reach_every_node_once_in_one_order_with_shared_ids_and_history() {
    let Some(redis) = Redis::start("cluster delivery") else {
        return;
    };
    let n = nodes(&redis, 3, &[]);
    let mut receivers: Vec<Client> = n.iter().map(|s| Client::join(s, "r", "rx", "").0).collect();
    let (mut a, _) = Client::join(&n[0], "r", "ann", "");
    let (mut b, _) = Client::join(&n[1], "r", "bob", "");
    const EACH: usize = 20;
    for i in 0..EACH {
        a.send(&format!("a{i}"));
        b.send(&format!("{{\"content\":\"b{i}\"}}"));
    }
    let seen: Vec<Vec<(u64, String, String)>> = receivers
        .iter_mut()
        .map(|c| triples(&c.messages(2 * EACH)))
        .collect();
    let expected_ids: Vec<u64> = (1..=2 * EACH as u64).collect();
    for s in &seen {
        assert_eq!(s.iter().map(|t| t.0).collect::<Vec<_>>(), expected_ids);
        assert_eq!(s, &seen[0], "every node delivers the same order");
    }
    // Each sender's messages in its own order, each exactly once.
    for (who, prefix) in [("ann", "a"), ("bob", "b")] {
        let mine: Vec<&str> = seen[0]
            .iter()
            .filter(|t| t.1 == who)
            .map(|t| t.2.as_str())
            .collect();
        let want: Vec<String> = (0..EACH).map(|i| format!("{prefix}{i}")).collect();
        assert_eq!(mine, want);
    }
    // The senders get their own messages too, from the cluster, in the same order.
    assert_eq!(triples(&a.messages(2 * EACH)), seen[0]);
    // Nothing more arrives: each message was delivered once.
    receivers[2].send("last");
    for c in &mut receivers {
        let e = c.next_of("message");
        assert_eq!(
            (e["id"].as_u64(), e["content"].as_str()),
            (Some(41), Some("last"))
        );
    }

    // History and ids agree on every node.
    let views: Vec<Value> = n
        .iter()
        .map(|s| get_json(s, "/rooms/r/messages")["messages"].clone())
        .collect();
    assert_eq!(views[0].as_array().unwrap().len(), 2 * EACH + 1);
    for v in &views {
        assert_eq!(v, &views[0]);
    }
    let since = get_json(&n[2], "/rooms/r/messages?since=38")["messages"].clone();
    assert_eq!(ids(since.as_array().unwrap()), [39, 40, 41]);

    // A client that saw up to id 30 on node 0 resumes on node 2: exactly the missed ones.
    let (_, w0) = Client::join(&n[0], "r", "carl", "");
    let epoch = w0["epoch"].as_str().unwrap().to_owned();
    let (_, w) = Client::join(&n[2], "r", "dora", &format!("?since=30&epoch={epoch}"));
    assert_eq!(w["epoch"], epoch.as_str());
    assert_eq!(w["recovered"], true);
    assert_eq!(
        ids(w["history"].as_array().unwrap()),
        (31..=41).collect::<Vec<u64>>()
    );
    // A foreign epoch gets everything and recovered: false.
    let (_, w) = Client::join(&n[1], "r", "eve", "?since=30&epoch=nope");
    assert_eq!(w["recovered"], false);
    assert_eq!(w["history"].as_array().unwrap().len(), 41);
}

#[test]
fn presence_covers_the_whole_cluster() {
    let Some(redis) = Redis::start("cluster presence") else {
        return;
    };
    let n = nodes(&redis, 2, &[]);
    let (mut alice, w) = Client::join(&n[0], "p", "alice", "");
    assert_eq!(w["users"], serde_json::json!(["alice"]));
    let (mut bob, w) = Client::join(&n[1], "p", "bob", "");
    assert_eq!(sorted_users(&w), ["alice", "bob"]);
    let j = alice.next_of("join");
    assert_eq!(j["client_id"], "bob");
    // Names are de-duplicated cluster-wide.
    let (alice2, w) = Client::join(&n[1], "p", "alice", "");
    assert_eq!(w["client_id"], "alice#2");
    assert_eq!(alice.next_of("join")["client_id"], "alice#2");
    assert_eq!(bob.next_of("join")["client_id"], "alice#2");
    for s in &n {
        eventually("3 users on every node", || {
            (room_users(s, "p") == 3).then_some(())
        });
    }
    alice2.close();
    assert_eq!(alice.next_of("leave")["client_id"], "alice#2");
    assert_eq!(bob.next_of("leave")["client_id"], "alice#2");
    for s in &n {
        eventually("2 users on every node", || {
            (room_users(s, "p") == 2).then_some(())
        });
    }
    // The global channel spans nodes too.
    let mut g0 = Client::connect(&n[0], "/ws");
    let mut g1 = Client::connect(&n[1], "/ws");
    g1.send("hello from 1");
    assert_eq!(g0.next_text().as_deref(), Some("hello from 1"));
    assert_eq!(g1.next_text().as_deref(), Some("hello from 1"));
    g0.send("hello from 0");
    assert_eq!(g1.next_text().as_deref(), Some("hello from 0"));
    assert_eq!(g0.next_text().as_deref(), Some("hello from 0"));
    for s in &n {
        let m = get_json(s, "/messages")["messages"].clone();
        let texts: Vec<&str> = m
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["message"].as_str().unwrap())
            .collect();
        assert_eq!(texts, ["hello from 1", "hello from 0"]);
    }
}

#[test]
fn a_killed_node_leaves_presence_within_seconds() {
    let Some(redis) = Redis::start("cluster node death") else {
        return;
    };
    let mut n = nodes(&redis, 2, &[]);
    let (mut alice, _) = Client::join(&n[0], "k", "alice", "");
    let (_bob, _) = Client::join(&n[1], "k", "bob", "");
    assert_eq!(alice.next_of("join")["client_id"], "bob");
    eventually("2 users", || (room_users(&n[0], "k") == 2).then_some(()));
    let killed = Instant::now();
    n[1].signal(libc::SIGKILL);
    let _ = n[1].wait_exit(WAIT);
    let leave = alice.next_of("leave");
    assert_eq!(leave["client_id"], "bob");
    let took = killed.elapsed();
    assert!(took <= Duration::from_secs(8), "ghost lived {took:?}");
    assert_eq!(room_users(&n[0], "k"), 1);
}

#[test]
fn nodes_serve_locally_while_redis_is_down_and_rejoin_when_it_returns() {
    let Some(mut redis) = Redis::start("cluster outage") else {
        return;
    };
    let n = nodes(&redis, 2, &[]);
    let (mut alice, _) = Client::join(&n[0], "o", "alice", "");
    let (mut carol, _) = Client::join(&n[0], "o", "carol", "");
    let (mut bob, _) = Client::join(&n[1], "o", "bob", "");
    alice.send("before");
    for c in [&mut alice, &mut carol, &mut bob] {
        assert_eq!(c.next_of("message")["content"], "before");
    }
    assert!(n[0].metric("wisp_redis_up") == 1.0);

    redis.kill();
    for s in &n {
        wait_redis(s, "down");
    }
    assert!(n[0].metric("wisp_redis_up") == 0.0);
    // Still serving its own clients.
    alice.send("during");
    assert_eq!(carol.next_of("message")["content"], "during");
    assert_eq!(alice.next_of("message")["content"], "during");
    let (_dan, w) = Client::join(&n[1], "o", "dan", "");
    assert_eq!(w["type"], "welcome");

    redis.restart();
    for s in &n {
        wait_redis(s, "up");
    }
    assert!(n[0].metric("wisp_redis_up") == 1.0);
    // Cross-node delivery resumes, without anyone reconnecting.
    alice.send("after");
    for c in [&mut alice, &mut carol, &mut bob] {
        assert_eq!(c.next_of("message")["content"], "after");
    }
    bob.send("back");
    for c in [&mut alice, &mut carol, &mut bob] {
        assert_eq!(c.next_of("message")["content"], "back");
    }
    // Presence was re-registered: both nodes count alice, carol, bob and dan.
    for s in &n {
        eventually("4 users after the outage", || {
            (room_users(s, "o") == 4).then_some(())
        });
    }
    // One warning for the outage and one line for the return, not one per message.
    for s in &n {
        let log = s.log();
        let downs = log
            .iter()
            .filter(|l| l.contains("Redis unreachable"))
            .count();
        let ups = log
            .iter()
            .filter(|l| l.contains("connected to Redis"))
            .count();
        assert_eq!((downs, ups), (1, 2), "{log:#?}");
    }
}

#[test]
fn a_server_api_message_reaches_every_node_with_a_shared_id() {
    let Some(redis) = Redis::start("a_server_api_message_reaches_every_node_with_a_shared_id")
    else {
        return;
    };
    let key_file = std::env::temp_dir().join(format!("wisp-api-key-{}", std::process::id()));
    std::fs::write(&key_file, "cluster-api-key\n").unwrap();
    let key_path = key_file.to_str().unwrap().to_owned();
    let ns = nodes(&redis, 2, &["--api-key-file", &key_path]);
    let (mut a, _) = Client::join(&ns[0], "apiroom", "alice", "");
    let (mut b, _) = Client::join(&ns[1], "apiroom", "bob", "");
    a.send("before");
    let first = a.next_of("message");
    assert_eq!(b.next_of("message")["id"], first["id"]);

    let body = r#"{"client_id":"backend","content":"from the API"}"#;
    let mut conn = common::HttpConn::connect(ns[1].addr);
    conn.send(
        format!(
            "POST /api/rooms/apiroom/messages HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer cluster-api-key\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let r = conn.read_response();
    assert_eq!(r.status, 202, "{}", r.head);

    let on_a = a.next_of("message");
    let on_b = b.next_of("message");
    assert_eq!(on_a, on_b);
    assert_eq!(on_a["client_id"], "backend");
    assert_eq!(on_a["content"], "from the API");
    assert!(on_a["id"].as_u64() > first["id"].as_u64(), "{on_a}");
    let history = get_json(&ns[0], "/rooms/apiroom/messages");
    assert_eq!(
        ids(history["messages"].as_array().unwrap()),
        ids(&[first, on_a])
    );
    let _ = std::fs::remove_file(&key_file);
}

/// `--compat fastapi` on two nodes: the seed rooms app's `system` line and `presence` list reach
/// both nodes' members, with the cluster-wide list, and no frame a member gets lacks `content`
/// (but `presence`).
#[test]
fn compat_fastapi_presence_across_nodes() {
    let Some(redis) = Redis::start("compat_fastapi_presence_across_nodes") else {
        return;
    };
    let ns = nodes(&redis, 2, &["--compat", "fastapi"]);
    let drawable = |e: &Value| {
        assert!(
            e["type"] == "presence" || e["content"].as_str().is_some_and(|c| !c.is_empty()),
            "the rooms client would draw an empty card for {e}"
        );
    };
    let mut alice = Client::connect(&ns[0], "/ws/cx/alice");
    let line = alice.next_of("system");
    assert_eq!(line["content"], "alice joined cx.");
    assert_eq!(
        alice.next_of("presence")["users"],
        serde_json::json!(["alice"])
    );
    alice.send(r#"{"content":"from node 0"}"#);
    let msg = alice.next_of("message");
    assert_eq!(msg["content"], "from node 0");
    assert!(
        msg["timestamp"].as_str().unwrap().ends_with("+00:00"),
        "{msg}"
    );

    let mut bob = Client::connect(&ns[1], "/ws/cx/bob");
    // Bob: the history as a message, then his own join, with everyone in the cluster.
    let got: Vec<Value> = (0..3).map(|_| bob.next().expect("an event")).collect();
    for e in &got {
        drawable(e);
    }
    assert_eq!(got[0]["content"], "from node 0", "{got:?}");
    assert_eq!(got[1]["content"], "bob joined cx.", "{got:?}");
    let mut users: Vec<String> = serde_json::from_value(got[2]["users"].clone()).unwrap();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);
    // Alice, on the other node, sees the same pair.
    let e = alice.next().expect("bob's join line");
    drawable(&e);
    assert_eq!(e["content"], "bob joined cx.");
    assert_eq!(
        alice.next_of("presence")["users"].as_array().unwrap().len(),
        2
    );

    bob.close();
    let e = alice.next().expect("bob's leave line");
    drawable(&e);
    assert_eq!(e["content"], "bob left cx.");
    assert_eq!(
        alice.next_of("presence")["users"],
        serde_json::json!(["alice"])
    );
}

/// A node follows a room only while it has members there: it subscribes to the room's channel at
/// the first join, unsubscribes at the last leave, and knows nothing of rooms it does not follow.
/// A node that starts following a busy room gets its history in the image read with the join.
#[test]
fn a_node_follows_only_the_rooms_its_members_are_in() {
    let Some(redis) = Redis::start("a_node_follows_only_the_rooms_its_members_are_in") else {
        return;
    };
    let n = nodes(&redis, 2, &[]);
    assert_eq!(redis.room_subscribers("busy"), 0);
    let (mut a, _) = Client::join(&n[0], "busy", "ann", "");
    let (_q, _) = Client::join(&n[1], "quiet", "quinn", "");
    assert_eq!(
        redis.room_subscribers("busy"),
        1,
        "only node 0 follows busy"
    );
    assert_eq!(
        redis.room_subscribers("quiet"),
        1,
        "only node 1 follows quiet"
    );
    for i in 0..30 {
        a.send(&format!("m{i}"));
    }
    assert_eq!(a.messages(30).last().unwrap()["content"], "m29");
    // Node 1 has nothing of busy: not listed, no history kept.
    let listed: Vec<String> = get_json(&n[1], "/rooms")["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ["quiet"]);
    // Its history view still answers, from Redis, exactly as node 0's does from its replica.
    let from_redis = get_json(&n[1], "/rooms/busy/messages");
    assert_eq!(from_redis, get_json(&n[0], "/rooms/busy/messages"));
    assert_eq!(ids(from_redis["messages"].as_array().unwrap()).len(), 30);
    let page = get_json(&n[1], "/rooms/busy/messages?since=25&limit=3");
    assert_eq!(ids(page["messages"].as_array().unwrap()), [26, 27, 28]);
    assert_eq!(page["more"], true);
    assert_eq!(
        redis.room_subscribers("busy"),
        1,
        "a view does not follow the room"
    );

    // A first member on node 1: it follows busy from now on, with the history up to its join.
    let (mut b, w) = Client::join(&n[1], "busy", "bob", "");
    assert_eq!(
        ids(w["history"].as_array().unwrap()),
        (1..=30).collect::<Vec<u64>>()
    );
    assert_eq!(sorted_users(&w), ["ann", "bob"]);
    assert_eq!(redis.room_subscribers("busy"), 2);
    a.send("after");
    assert_eq!(b.next_of("message")["id"], 31);

    // The last member on node 0 leaves: node 0 unfollows busy and forgets it.
    a.close();
    eventually("node 0 unsubscribed from busy", || {
        (redis.room_subscribers("busy") == 1).then_some(())
    });
    assert_eq!(b.next_of("leave")["client_id"], "ann");
    assert_eq!(room_users(&n[0], "busy"), 0);
    // Following it again starts from a fresh image: nothing missed, nothing repeated.
    b.send("while node 0 was away");
    assert_eq!(b.next_of("message")["id"], 32);
    let (_c, w) = Client::join(&n[0], "busy", "carl", "");
    let h = w["history"].as_array().unwrap();
    assert_eq!(ids(h), (1..=32).collect::<Vec<u64>>());
}

/// Posts queued in the same turn reach Redis in one round trip and a few script calls: a burst of
/// 300 messages costs far fewer than 300 script runs, and keeps its order and ids.
#[test]
fn a_burst_of_posts_is_batched_in_order() {
    let Some(redis) = Redis::start("a_burst_of_posts_is_batched_in_order") else {
        return;
    };
    let n = nodes(&redis, 2, &["--rate-limit", "0"]);
    let (mut a, _) = Client::join(&n[0], "burst", "ann", "");
    let (mut b, _) = Client::join(&n[1], "burst", "bob", "");
    const N: usize = 300;
    let before = redis.evalsha_calls();
    a.send_burst((0..N).map(|i| format!("b{i}")));
    let got = triples(&b.messages(N));
    let after = redis.evalsha_calls();
    let want: Vec<(u64, String, String)> = (0..N)
        .map(|i| (i as u64 + 1, "ann".to_owned(), format!("b{i}")))
        .collect();
    assert_eq!(got, want);
    assert_eq!(triples(&a.messages(N)), want);
    // Heartbeats run scripts too (one a second per node): allow them.
    let calls = after - before;
    assert!(calls < (N / 4) as u64, "{calls} script calls for {N} posts");
    eprintln!("{N} posts: {calls} script calls");
}

/// A view answered from Redis that Redis is too slow to give: `504` at the request deadline, and
/// the node keeps serving (the late image is dropped).
#[test]
fn a_view_redis_does_not_answer_in_time_gets_504() {
    let Some(redis) = Redis::start("a_view_redis_does_not_answer_in_time_gets_504") else {
        return;
    };
    let n = nodes(&redis, 1, &["--handshake-timeout", "1"]);
    let started = Instant::now();
    let cli = {
        let port = redis.port.to_string();
        thread::spawn(move || {
            Command::new("redis-cli")
                .args(["-p", &port, "DEBUG", "SLEEP", "1.6"])
                .output()
                .expect("redis-cli runs")
        })
    };
    thread::sleep(Duration::from_millis(100));
    let r = n[0].get("/rooms/elsewhere/messages");
    assert_eq!(r.status, 504, "{}", r.head);
    assert!(started.elapsed() < Duration::from_millis(1600));
    cli.join().unwrap();
    let r = n[0].get("/rooms/elsewhere/messages");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(n[0].healthz()["status"], "ok");
}

// ---- Redis Cluster ------------------------------------------------------------------------------

/// A Redis Cluster for `test` and `n` daemons on it, each waited for until `/healthz` says Redis is
/// up; `None` (with a notice) when `redis-server` is not installed.
fn cluster_nodes(test: &str, n: usize) -> Option<(redis_cluster::RedisCluster, Vec<Server>)> {
    let cluster = redis_cluster::RedisCluster::start(test)?;
    let seeds: Vec<String> = cluster
        .seeds()
        .iter()
        .map(|a| format!("redis://{a}"))
        .collect();
    let seeds = seeds.join(",");
    let args = [
        "--redis-cluster",
        seeds.as_str(),
        "--log",
        "debug",
        "--rate-limit",
        "0",
    ];
    let servers: Vec<Server> = (0..n).map(|_| Server::start(&args)).collect();
    for s in &servers {
        wait_redis(s, "up");
    }
    Some((cluster, servers))
}

/// The slot of `room`'s keys.
fn room_slot(cluster: &redis_cluster::RedisCluster, room: &str) -> u16 {
    cluster.keyslot(format!("wisp:{{r:{room}}}:meta").as_bytes())
}

/// A room name whose slot `master` owns, `prefix` followed by a number.
fn room_on(cluster: &redis_cluster::RedisCluster, master: &str, prefix: &str) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .find(|r| cluster.master_of_slot(room_slot(cluster, r)) == master)
        .expect("a room on every master")
}

/// Three daemons on three shards: each shard's room keeps one order and one id sequence on every
/// node, its history and presence agree everywhere, a node that does not follow a room reads its
/// history from the right shard, and the global channel spans the nodes.
#[test]
fn a_redis_cluster_serves_rooms_on_every_shard() {
    let Some((cluster, n)) = cluster_nodes("a_redis_cluster_serves_rooms_on_every_shard", 3) else {
        return;
    };
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    let rooms: Vec<String> = masters
        .iter()
        .map(|m| room_on(&cluster, m, "shard"))
        .collect();
    for room in &rooms {
        let mut members: Vec<Client> = n
            .iter()
            .enumerate()
            .map(|(i, s)| Client::join(s, room, &format!("m{i}"), "").0)
            .collect();
        for i in 0..10 {
            members[0].send(&format!("a{i}"));
            members[2].send(&format!("c{i}"));
        }
        let seen: Vec<Vec<(u64, String, String)>> = members
            .iter_mut()
            .map(|c| triples(&c.messages(20)))
            .collect();
        assert_eq!(
            seen[0].iter().map(|t| t.0).collect::<Vec<_>>(),
            (1..=20).collect::<Vec<u64>>(),
            "{room}"
        );
        for s in &seen {
            assert_eq!(s, &seen[0], "{room}: one order on every node");
        }
        let views: Vec<Value> = n
            .iter()
            .map(|s| get_json(s, &format!("/rooms/{room}/messages")))
            .collect();
        assert_eq!(views[0]["messages"].as_array().unwrap().len(), 20);
        assert!(
            views.iter().all(|v| v == &views[0]),
            "{room}: history differs"
        );
        for s in &n {
            eventually("3 users on every node", || {
                (room_users(s, room) == 3).then_some(())
            });
        }
        // A resume on another node: exactly what was missed.
        let epoch = {
            let (_, w) = Client::join(&n[0], room, "probe", "");
            w["epoch"].as_str().unwrap().to_owned()
        };
        let (_, w) = Client::join(&n[1], room, "late", &format!("?since=15&epoch={epoch}"));
        assert_eq!(w["recovered"], true);
        assert_eq!(ids(w["history"].as_array().unwrap()), [16, 17, 18, 19, 20]);
    }
    // A room only node 0 follows: node 2 reads its history from its shard.
    let lone = room_on(&cluster, &masters[1], "lone");
    let (mut l, _) = Client::join(&n[0], &lone, "lee", "");
    l.send("alone");
    l.next_of("message");
    assert_eq!(
        get_json(&n[2], &format!("/rooms/{lone}/messages")),
        get_json(&n[0], &format!("/rooms/{lone}/messages"))
    );
    // The global channel lives on one shard and reaches every node.
    let mut g0 = Client::connect(&n[0], "/ws");
    let mut g2 = Client::connect(&n[2], "/ws");
    g2.send("hello everyone");
    assert_eq!(g0.next_text().as_deref(), Some("hello everyone"));
    assert_eq!(g2.next_text().as_deref(), Some("hello everyone"));
}

/// A shard's master killed while rooms on it and on another shard chat: the other shard's room
/// never notices (every message within a second); the failed shard's room resumes after the
/// failover, in order, with no id delivered twice, and a resume from before the failure is
/// `recovered: true` only if nothing it missed is gone.
#[test]
fn a_failover_stalls_only_the_rooms_of_the_failed_shard() {
    let Some((mut cluster, n)) =
        cluster_nodes("a_failover_stalls_only_the_rooms_of_the_failed_shard", 2)
    else {
        return;
    };
    let masters = cluster.masters();
    let failing = room_on(&cluster, &masters[0], "fail");
    let healthy = room_on(&cluster, &masters[1], "calm");
    let (mut f0, w) = Client::join(&n[0], &failing, "fay", "");
    let epoch = w["epoch"].as_str().unwrap().to_owned();
    let (mut f1, _) = Client::join(&n[1], &failing, "fred", "");
    let (mut h0, _) = Client::join(&n[0], &healthy, "hal", "");
    let (mut h1, _) = Client::join(&n[1], &healthy, "hugo", "");
    for i in 0..5 {
        f0.send(&format!("before{i}"));
    }
    let before = triples(&f1.messages(5));
    let last_before = before.last().unwrap().0;

    // The healthy room chats through the failover, one message at a time, each timed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let chatter = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let mut count = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let t = Instant::now();
                h0.send(&format!("calm{count}"));
                let got = h1.next_of("message");
                assert_eq!(got["content"], format!("calm{count}"));
                worst = worst.max(t.elapsed());
                count += 1;
                thread::sleep(Duration::from_millis(20));
            }
            (worst, count)
        })
    };
    thread::sleep(Duration::from_millis(200));
    let slot = room_slot(&cluster, &failing);
    let killer = thread::spawn(move || {
        let failover = cluster.kill_master_of(slot);
        (cluster, failover)
    });
    // Sent while the shard has no master: they wait for the failover.
    thread::sleep(Duration::from_millis(300));
    for i in 0..5 {
        f0.send(&format!("during{i}"));
    }
    let (cluster, failover) = killer.join().unwrap();
    eprintln!("failover took {:?}", failover.took);
    thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Release);
    let (worst, count) = chatter.join().unwrap();
    assert!(count > 20, "the healthy room chatted {count} times");
    assert!(
        worst < Duration::from_secs(1),
        "the healthy room stalled {worst:?}"
    );

    // The failed shard's room resumes: the messages sent meanwhile arrive, in order.
    let during: Vec<(u64, String, String)> = triples(&f1.messages(5));
    assert_eq!(
        during.iter().map(|t| t.2.as_str()).collect::<Vec<_>>(),
        ["during0", "during1", "during2", "during3", "during4"]
    );
    let mut all: Vec<u64> = before.iter().chain(&during).map(|t| t.0).collect();
    assert!(
        all.windows(2).all(|w| w[0] < w[1]),
        "ids out of order: {all:?}"
    );
    all.dedup();
    assert_eq!(all.len(), 10, "an id was delivered twice");
    f0.send("after");
    let after = f1.next_of("message");
    assert!(after["id"].as_u64().unwrap() > during.last().unwrap().0);

    // A resume from before the failure: `recovered: true` only with everything it missed.
    let (_, w) = Client::join(
        &n[1],
        &failing,
        "rita",
        &format!("?since={last_before}&epoch={epoch}"),
    );
    let got = ids(w["history"].as_array().unwrap());
    if w["recovered"] == true {
        let want: Vec<u64> = during
            .iter()
            .map(|t| t.0)
            .chain([after["id"].as_u64().unwrap()])
            .collect();
        assert_eq!(got, want, "{w}");
    }
    drop(cluster);
}

/// A room's slot migrated to another master while the room chats: every message arrives at both
/// nodes, once, in order, with consecutive ids.
#[test]
fn a_slot_migrated_while_its_room_chats_loses_nothing() {
    let Some((cluster, n)) = cluster_nodes("a_slot_migrated_while_its_room_chats_loses_nothing", 2)
    else {
        return;
    };
    let masters = cluster.masters();
    let room = room_on(&cluster, &masters[0], "move");
    let (mut a, _) = Client::join(&n[0], &room, "ann", "");
    let (mut b, _) = Client::join(&n[1], &room, "bob", "");
    const N: usize = 120;
    let sender = thread::spawn(move || {
        for i in 0..N {
            a.send(&format!("m{i}"));
            thread::sleep(Duration::from_millis(10));
        }
        a
    });
    thread::sleep(Duration::from_millis(300));
    cluster.migrate_slot(room_slot(&cluster, &room), &masters[2]);
    let mut a = sender.join().unwrap();
    let want: Vec<(u64, String, String)> = (0..N)
        .map(|i| (i as u64 + 1, "ann".to_owned(), format!("m{i}")))
        .collect();
    assert_eq!(triples(&b.messages(N)), want);
    assert_eq!(triples(&a.messages(N)), want);
    assert_eq!(
        cluster.master_of_slot(room_slot(&cluster, &room)),
        masters[2]
    );
}

/// A daemon killed: its members leave the rooms on every shard within seconds.
#[test]
fn a_killed_node_leaves_presence_on_a_redis_cluster() {
    let Some((cluster, mut n)) =
        cluster_nodes("a_killed_node_leaves_presence_on_a_redis_cluster", 2)
    else {
        return;
    };
    let masters = cluster.masters();
    let mut watchers = Vec::new();
    for m in &masters {
        let room = room_on(&cluster, m, "kill");
        let (mut w, _) = Client::join(&n[0], &room, "watcher", "");
        let (_gone, _) = Client::join(&n[1], &room, "doomed", "");
        assert_eq!(w.next_of("join")["client_id"], "doomed");
        std::mem::forget(_gone);
        watchers.push(w);
    }
    let killed = Instant::now();
    n[1].signal(libc::SIGKILL);
    let _ = n[1].wait_exit(WAIT);
    for w in &mut watchers {
        assert_eq!(w.next_of("leave")["client_id"], "doomed");
    }
    let took = killed.elapsed();
    assert!(took <= Duration::from_secs(8), "ghosts lived {took:?}");
}

/// Writes lost by Redis (what a failover to a lagging replica does): once the node's links come
/// back, the room's ids continue after the last one the node saw (never given out twice), and a
/// resume from before the loss is told `recovered: false`.
#[test]
fn lost_writes_never_reuse_an_id() {
    let Some(redis) = Redis::start("lost_writes_never_reuse_an_id") else {
        return;
    };
    let n = nodes(&redis, 1, &[]);
    let (mut a, w) = Client::join(&n[0], "lost", "ann", "");
    let epoch = w["epoch"].as_str().unwrap().to_owned();
    for i in 1..=10 {
        a.send(&format!("m{i}"));
    }
    assert_eq!(ids(&a.messages(10)), (1..=10).collect::<Vec<u64>>());
    // Redis forgets ids 6..=10, as a promoted replica that had not received them would.
    redis.cli(&["HSET", "wisp:{r:lost}:meta", "seq", "5"]);
    redis.cli(&["LTRIM", "wisp:{r:lost}:log", "0", "4"]);
    redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    thread::sleep(Duration::from_millis(300));
    wait_redis(&n[0], "up");
    eventually("the post after the loss", || {
        a.send("after");
        let e = a.next_of("message");
        (e["content"] == "after")
            .then_some(())
            .or_else(|| panic!("{e}"))
    });
    let history = get_json(&n[0], "/rooms/lost/messages");
    let last = history["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["content"], "after");
    assert_eq!(last["id"], 11, "{history}");
    let (_, w) = Client::join(&n[0], "lost", "rita", &format!("?since=3&epoch={epoch}"));
    assert_eq!(w["recovered"], false, "{w}");
    let (_, w) = Client::join(&n[0], "lost", "sam", &format!("?since=10&epoch={epoch}"));
    assert_eq!(w["recovered"], true, "{w}");
    assert_eq!(ids(w["history"].as_array().unwrap()), [11]);
}

/// Redis forgets its scripts (`SCRIPT FLUSH`, or a promoted replica that never had them): the
/// scripts are loaded again and what met `NOSCRIPT` is sent again, once: nothing is lost or
/// doubled.
#[test]
fn flushed_scripts_are_loaded_again_and_nothing_is_sent_twice() {
    let Some(redis) = Redis::start("flushed_scripts_are_loaded_again_and_nothing_is_sent_twice")
    else {
        return;
    };
    let n = nodes(&redis, 1, &["--rate-limit", "0"]);
    let (mut a, _) = Client::join(&n[0], "flush", "ann", "");
    a.send("before");
    assert_eq!(a.next_of("message")["id"], 1);
    redis.cli(&["SCRIPT", "FLUSH"]);
    a.send_burst((0..20).map(|i| format!("after{i}")));
    let got = triples(&a.messages(20));
    let want: Vec<(u64, String, String)> = (0..20)
        .map(|i| (i as u64 + 2, "ann".to_owned(), format!("after{i}")))
        .collect();
    assert_eq!(got, want);
    let history = get_json(&n[0], "/rooms/flush/messages");
    assert_eq!(history["messages"].as_array().unwrap().len(), 21);
}
