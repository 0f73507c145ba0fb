//! Shared helpers for the integration tests: start the real binary on an
//! ephemeral port, speak raw HTTP, and drive WebSocket peers.
//!
//! The main WebSocket peer is `tungstenite` (a client we did not write); the
//! raw peer ([`RawWs`]) exists to send what a well-behaved client never would
//! (unmasked frames, reserved opcodes, bad UTF-8, no pong answers).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use wisp::protocol::client::{check_response, encode_masked, request, MaskRng};
use wisp::protocol::{Decoded, Event, OpCode, Role, WebSocket};

/// The bound on every single wait in these tests.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A running `wisp` daemon, killed (by PID) when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `wisp --bind 127.0.0.1:0 ARGS` and waits for its listening line.
    pub fn start(args: &[&str]) -> Server {
        Server::try_start(args).unwrap_or_else(|e| panic!("wisp {args:?} did not start: {e}"))
    }

    /// Like [`Server::start`], but reports a failure to start instead of panicking.
    pub fn try_start(args: &[&str]) -> Result<Server, String> {
        Server::try_start_env(args, &[])
    }

    /// Starts with extra `WISP_*` environment variables.
    pub fn start_env(args: &[&str], envs: &[(&str, &str)]) -> Server {
        Server::try_start_env(args, envs)
            .unwrap_or_else(|e| panic!("wisp {args:?} {envs:?} did not start: {e}"))
    }

    pub fn try_start_env(args: &[&str], envs: &[(&str, &str)]) -> Result<Server, String> {
        Server::try_start_with(args, envs, None)
    }

    /// Starts with the open-file limit (soft and hard) of the daemon set to
    /// `nofile`, so that it cannot raise it: for the `--max-connections` clamp.
    pub fn start_with_nofile(args: &[&str], nofile: u64) -> Server {
        Server::try_start_with(args, &[], Some(nofile))
            .unwrap_or_else(|e| panic!("wisp {args:?} (nofile {nofile}) did not start: {e}"))
    }

    pub fn try_start_with(
        args: &[&str],
        envs: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Result<Server, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wisp"));
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            // SAFETY: setrlimit is async-signal-safe and only reads `lim`, a
            // plain struct copied into the closure; nothing else runs in the
            // forked child before exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        cmd.arg("--bind")
            .arg("127.0.0.1:0")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("WISP_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(envs.iter().copied());
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = Arc::clone(&log);
            // Drain stderr for the life of the process so the pipe never fills.
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line.clone());
                    log.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = listening_addr(&line) {
                        return Ok(Server { child, addr, log });
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "no listening line; stderr: {:?}",
                        log.lock().unwrap()
                    ));
                }
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `ws://127.0.0.1:PORT{path}`
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Every stderr line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with the PID of our own child and a valid signal number.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits up to `within` for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident set size in KiB, from `/proc/PID/status`.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS line")
    }

    /// One `GET` on a fresh connection (`Connection: close`).
    pub fn get(&self, path: &str) -> Response {
        let mut c = HttpConn::connect(self.addr);
        c.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes());
        c.read_response()
    }

    /// `/healthz` as JSON.
    pub fn healthz(&self) -> serde_json::Value {
        let r = self.get("/healthz");
        assert_eq!(r.status, 200, "healthz: {}", r.head);
        serde_json::from_slice(&r.body).expect("healthz is JSON")
    }

    /// The sum of every sample of metric `name` in `/metrics` (0 if absent).
    pub fn metric(&self, name: &str) -> f64 {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200);
        metric_value(&String::from_utf8_lossy(&r.body), name)
    }

    /// Polls `metric(name)` until it reaches `at_least` or `within` passes; returns the last value.
    pub fn wait_metric(&self, name: &str, at_least: f64, within: Duration) -> f64 {
        let deadline = Instant::now() + within;
        loop {
            let v = self.metric(name);
            if v >= at_least || Instant::now() >= deadline {
                return v;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("listening on http://").nth(1)?;
    let host = rest.split('/').next()?;
    host.parse().ok()
}

/// Sums the samples of `name` in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The head as text, for messages.
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// A raw TCP connection with a read buffer.
pub struct HttpConn {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl HttpConn {
    pub fn connect(addr: SocketAddr) -> HttpConn {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
        HttpConn::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> HttpConn {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        HttpConn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends, and reports a failure (the server may have closed already).
    pub fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads more bytes into `buf`; `false` on EOF or reset.
    pub fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if is_closed(&e) => false,
            Err(e) => panic!("read: {e}"),
        }
    }

    /// Takes a complete response head (and no body) off the front of `buf`:
    /// `None` while it is still partial.
    fn take_head(&mut self) -> Result<Option<Response>, httparse::Error> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(n) = resp.parse(&self.buf)? else {
            return Ok(None);
        };
        let out = Response {
            status: resp.code.unwrap_or(0),
            head: String::from_utf8_lossy(&self.buf[..n]).into_owned(),
            headers: resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
            body: Vec::new(),
        };
        self.buf.drain(..n);
        Ok(Some(out))
    }

    /// Reads a response head (and no body).
    pub fn read_head(&mut self) -> Response {
        loop {
            if let Some(r) = self.take_head().expect("a valid HTTP response") {
                return r;
            }
            assert!(
                self.fill(),
                "EOF inside a response head: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Reads a response head and its `Content-Length` body.
    pub fn read_response(&mut self) -> Response {
        let mut r = self.read_head();
        let len = r.content_length().unwrap_or(0);
        while self.buf.len() < len {
            assert!(self.fill(), "EOF inside a body");
        }
        r.body = self.buf.drain(..len).collect();
        r
    }

    /// Whether the peer closes the connection within `within` (bytes that
    /// arrive meanwhile are kept in `buf`).
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let r = self.stream.read(&mut chunk);
            self.stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            match r {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if is_closed(&e) => return true,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return false
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

pub fn is_closed(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

/// A complete upgrade request for `path`, with a fixed valid key.
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A frame with an explicit first byte (FIN, RSV, opcode), masked with `key` if given.
pub fn raw_frame(b0: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![b0];
    let mask_bit = if key.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xFFFF {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match key {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked frame with an explicit first byte and a fixed key.
pub fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(b0, payload, Some([0x37, 0xFA, 0x21, 0x3D]))
}

/// A frame the server sent, decoded and owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

impl Frame {
    /// An owned copy of what the decoder found.
    pub fn from_event(ev: Event<'_>) -> Frame {
        match ev {
            Event::Text(t) => Frame::Text(t.to_string()),
            Event::Binary(b) => Frame::Binary(b.to_vec()),
            Event::Ping(p) => Frame::Ping(p.to_vec()),
            Event::Pong(p) => Frame::Pong(p.to_vec()),
            Event::Close { code, reason } => {
                Frame::Close(code.map(|c| c.as_u16()), reason.to_string())
            }
            // The test client never offers permessage-deflate.
            Event::Compressed(..) => panic!("the server sent a compressed message unasked"),
        }
    }
}

/// A WebSocket peer over a raw socket, decoding with wisp's own codec (client role).
pub struct RawWs {
    pub conn: HttpConn,
    ws: WebSocket,
    rng: MaskRng,
}

impl RawWs {
    /// Upgrades a fresh connection to `path`; panics unless the answer is 101.
    pub fn connect(server: &Server, path: &str) -> RawWs {
        RawWs::connect_from(HttpConn::connect(server.addr), server.addr, path)
    }

    pub fn connect_from(mut conn: HttpConn, addr: SocketAddr, path: &str) -> RawWs {
        let mut rng = MaskRng::from_os();
        let key = rng.key();
        conn.send(&request(&addr.to_string(), path, &key));
        loop {
            match check_response(&conn.buf, &key) {
                Ok(Decoded::Done(n)) => {
                    conn.buf.drain(..n);
                    break;
                }
                Ok(Decoded::NeedMore) => assert!(conn.fill(), "EOF during the handshake"),
                Err(e) => panic!(
                    "upgrade refused: {e:?}: {:?}",
                    String::from_utf8_lossy(&conn.buf)
                ),
            }
        }
        RawWs {
            conn,
            ws: WebSocket::new(Role::Client, 1 << 30),
            rng,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.conn.send(bytes);
    }

    /// Sends one masked frame (FIN set).
    pub fn send(&mut self, opcode: OpCode, payload: &[u8]) {
        let mut out = Vec::new();
        encode_masked(&mut out, opcode, payload, self.rng.mask());
        self.conn.send(&out);
    }

    pub fn send_text(&mut self, text: &str) {
        self.send(OpCode::Text, text.as_bytes());
    }

    /// The next frame, or `None` once the server has closed the TCP connection.
    pub fn recv(&mut self) -> Option<Frame> {
        loop {
            let (n, frame) = match self.ws.read(&mut self.conn.buf) {
                Ok((n, ev)) => (n, ev.map(Frame::from_event)),
                Err(e) => panic!("the server sent an invalid frame: {e:?}"),
            };
            self.conn.buf.drain(..n);
            if frame.is_some() {
                return frame;
            }
            if n == 0 && !self.conn.fill() {
                return None;
            }
        }
    }

    /// Skips data and pings until a close frame; returns its code. Panics on EOF first.
    pub fn recv_close(&mut self) -> Option<u16> {
        loop {
            match self.recv() {
                Some(Frame::Close(code, _)) => return code,
                Some(_) => {}
                None => panic!("EOF without a close frame"),
            }
        }
    }

    /// Skips pings/pongs; the next text message.
    pub fn recv_text(&mut self) -> String {
        loop {
            match self.recv() {
                Some(Frame::Text(t)) => return t,
                Some(Frame::Ping(_) | Frame::Pong(_)) => {}
                other => panic!("expected text, got {other:?}"),
            }
        }
    }

    /// After the server's close: the TCP connection ends within `within`.
    pub fn expect_eof(&mut self, within: Duration) {
        assert!(
            self.conn.closed_within(within),
            "the server kept the TCP connection open"
        );
    }
}

pub type Ws = tungstenite::WebSocket<TcpStream>;

/// A tungstenite client connected to `path`.
pub fn ws_connect(server: &Server, path: &str) -> Ws {
    try_ws_connect(server, path).unwrap_or_else(|e| panic!("connect {path}: {e}"))
}

pub fn try_ws_connect(server: &Server, path: &str) -> Result<Ws, String> {
    let stream = TcpStream::connect_timeout(&server.addr, TIMEOUT).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    match tungstenite::client(server.ws_url(path), stream) {
        Ok((ws, _)) => Ok(ws),
        Err(e) => Err(format!("{e:?}")),
    }
}

/// The next data message (control frames skipped; tungstenite answers pings itself).
pub fn ws_read(ws: &mut Ws) -> tungstenite::Message {
    loop {
        match ws.read().expect("ws read") {
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
            m => return m,
        }
    }
}

/// The next room event as JSON.
pub fn read_event(ws: &mut Ws) -> serde_json::Value {
    match ws_read(ws) {
        tungstenite::Message::Text(t) => serde_json::from_str(&t).expect("event is JSON"),
        m => panic!("expected a text event, got {m:?}"),
    }
}

/// Reads events until one of type `kind`; returns it.
pub fn read_event_of(ws: &mut Ws, kind: &str) -> serde_json::Value {
    loop {
        let ev = read_event(ws);
        if ev["type"] == kind {
            return ev;
        }
    }
}

/// Reads from a tungstenite client until the server's close; returns its code.
pub fn ws_read_close(ws: &mut Ws) -> u16 {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(Some(f))) => return f.code.into(),
            Ok(tungstenite::Message::Close(None)) => return 1005,
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

/// After a close: reading ends with `ConnectionClosed` (the server closed TCP).
pub fn ws_expect_closed(ws: &mut Ws) {
    for _ in 0..100 {
        match ws.read() {
            Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
                return
            }
            Err(tungstenite::Error::Io(e)) if is_closed(&e) => return,
            Err(e) => panic!("expected the connection to end, got {e}"),
            Ok(_) => {}
        }
    }
    panic!("the connection did not end");
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A small deterministic generator (xorshift64*) for reproducible random bytes.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// A TCP connection from `from` (any 127/8 address works on Linux), with an
/// optional small receive buffer (a slow reader fills up sooner).
pub fn connect_from(
    from: std::net::IpAddr,
    to: SocketAddr,
    recv_buffer: Option<usize>,
) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    if let Some(n) = recv_buffer {
        sock.set_recv_buffer_size(n)?;
    }
    sock.bind(&SocketAddr::new(from, 0).into())?;
    sock.connect_timeout(&to.into(), TIMEOUT)?;
    Ok(sock.into())
}

/// Two tungstenite clients in one room that check, on demand, that chat still
/// works and that nothing was lost: ids arrive strictly consecutive.
pub struct Bystanders {
    pub a: Ws,
    pub b: Ws,
    last_id: Option<u64>,
    n: usize,
}

impl Bystanders {
    pub fn join(server: &Server, room: &str) -> Bystanders {
        let mut a = ws_connect(server, &format!("/ws/{room}/alice"));
        assert_eq!(read_event(&mut a)["type"], "welcome");
        let mut b = ws_connect(server, &format!("/ws/{room}/bob"));
        assert_eq!(read_event(&mut b)["type"], "welcome");
        assert_eq!(read_event_of(&mut a, "join")["client_id"], "bob");
        Bystanders {
            a,
            b,
            last_id: None,
            n: 0,
        }
    }

    /// Alice says something; both receive it, with the next id.
    pub fn check(&mut self) {
        self.n += 1;
        let text = format!("still here {}", self.n);
        self.a
            .send(tungstenite::Message::Text(text.clone()))
            .expect("bystander send");
        let ea = read_event_of(&mut self.a, "message");
        let eb = read_event_of(&mut self.b, "message");
        assert_eq!(ea["content"], text.as_str());
        assert_eq!(eb["content"], text.as_str());
        assert_eq!(ea["id"], eb["id"]);
        let id = ea["id"].as_u64().expect("numeric id");
        if let Some(last) = self.last_id {
            assert_eq!(id, last + 1, "a message id was skipped");
        }
        self.last_id = Some(id);
    }
}

// ---- helpers for attack tests (tests/attacks.rs) ---------------------------

/// `127.0.0.x`: a distinct loopback source address, so that per-address
/// limits (connections, rate) never mix an attacker with the bystanders, who
/// connect from 127.0.0.1.
pub fn lo(x: u8) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, x))
}

/// Resident set size of process `pid` in KiB; `None` once it has exited (a
/// zombie has no `VmRSS` line).
pub fn rss_kib_of(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Samples a daemon's RSS every 20 ms on its own thread and keeps the peak.
///
/// Past `cap_kib` it kills the daemon (SIGKILL, by the PID this test
/// started): an unbounded daemon would otherwise take the shared machine
/// down before the test could fail. Drop it before the [`Server`] (declare it
/// after), so the PID is never signalled after the child was reaped.
pub struct RssWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    peak: Arc<std::sync::atomic::AtomicU64>,
    killed: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    pub cap_kib: u64,
}

impl RssWatch {
    pub fn start(server: &Server, cap_kib: u64) -> RssWatch {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let pid = server.pid();
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kib_of(pid).unwrap_or(0)));
        let killed = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, peak, killed) = (stop.clone(), peak.clone(), killed.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(kib) = rss_kib_of(pid) else { break };
                    peak.fetch_max(kib, Ordering::Relaxed);
                    if kib > cap_kib {
                        // SAFETY: kill(2) on the PID of the daemon this test
                        // started and has not reaped yet (see the type's doc).
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                        killed.store(true, Ordering::Relaxed);
                        break;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            })
        };
        RssWatch {
            stop,
            peak,
            killed,
            thread: Some(thread),
            cap_kib,
        }
    }

    /// The highest RSS seen so far, KiB.
    pub fn peak_kib(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the daemon passed the cap and was killed.
    pub fn killed(&self) -> bool {
        self.killed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP connection from `from` with an optional small receive buffer and an
/// optional small MSS (set before connecting, so the server's send buffer,
/// sized from the MSS, stays small too: what it cannot hand to the kernel it
/// has to hold itself).
pub fn connect_tuned(
    from: std::net::IpAddr,
    to: SocketAddr,
    recv_buffer: Option<usize>,
    mss: Option<u32>,
) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    if let Some(n) = recv_buffer {
        sock.set_recv_buffer_size(n)?;
    }
    if let Some(m) = mss {
        sock.set_mss(m)?;
    }
    sock.bind(&SocketAddr::new(from, 0).into())?;
    sock.connect_timeout(&to.into(), TIMEOUT)?;
    let stream: TcpStream = sock.into();
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// How [`pump`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpEnd {
    /// Everything asked for was written.
    Done,
    /// No byte was accepted for the stall time: the server stopped reading.
    Stalled,
    /// The connection was closed or reset (by the server, or by its death).
    Closed,
    /// The time limit or the stop flag.
    Stopped,
}

/// What [`pump`] got through.
#[derive(Debug, Clone, Copy)]
pub struct Pumped {
    pub accepted: u64,
    pub elapsed: Duration,
    pub end: PumpEnd,
}

/// [`pump`] on a thread of its own, for an attack that runs while the test watches the bystanders:
/// at most `total` bytes of `chunk` repeated, within 10 s, giving up after 3 s without progress or
/// when `stop` is set. The thread hands the stream back with what was pumped.
pub fn pump_in_background(
    mut stream: TcpStream,
    chunk: Vec<u8>,
    total: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(Pumped, TcpStream)> {
    std::thread::spawn(move || {
        let p = pump(
            &mut stream,
            &chunk,
            total,
            Duration::from_secs(10),
            Duration::from_secs(3),
            &stop,
        );
        (p, stream)
    })
}

/// Writes `chunk` over and over (never reading) until `total` bytes were
/// accepted, no byte was accepted for `stall`, the connection ends,
/// `max_time` passes or `stop` is set. `chunk` should hold whole frames or
/// requests; `total` is rounded up to whole chunks.
pub fn pump(
    stream: &mut TcpStream,
    chunk: &[u8],
    total: u64,
    max_time: Duration,
    stall: Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> Pumped {
    let started = Instant::now();
    let mut last_progress = started;
    let mut accepted = 0u64;
    let mut pos = 0usize;
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let end = loop {
        if accepted >= total && pos == 0 {
            break PumpEnd::Done;
        }
        if stop.load(std::sync::atomic::Ordering::Relaxed) || started.elapsed() >= max_time {
            break PumpEnd::Stopped;
        }
        match stream.write(&chunk[pos..]) {
            Ok(0) => break PumpEnd::Closed,
            Ok(n) => {
                accepted += n as u64;
                pos = (pos + n) % chunk.len();
                last_progress = Instant::now();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if last_progress.elapsed() >= stall {
                    break PumpEnd::Stalled;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break PumpEnd::Closed,
        }
    };
    Pumped {
        accepted,
        elapsed: started.elapsed(),
        end,
    }
}

impl HttpConn {
    /// Reads one response (head and `Content-Length` body) within `within`;
    /// an error says what was missing instead of panicking.
    pub fn try_read_response(&mut self, within: Duration) -> Result<Response, String> {
        let deadline = Instant::now() + within;
        let mut head: Option<Response> = None;
        loop {
            if head.is_none() {
                head = self
                    .take_head()
                    .map_err(|e| format!("not an HTTP response: {e}"))?;
            }
            if let Some(r) = head.as_mut() {
                let len = r.content_length().unwrap_or(0);
                if self.buf.len() >= len {
                    r.body = self.buf.drain(..len).collect();
                    return Ok(head.take().expect("bug: head is set"));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no complete response within {within:?} ({} bytes so far)",
                    self.buf.len()
                ));
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 64 * 1024];
            let r = self.stream.read(&mut chunk);
            self.stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            match r {
                Ok(0) => return Err("EOF before a complete response".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

/// `GET path` on a fresh connection from `from`, answered within `within`;
/// returns the time it took and the response.
pub fn timed_get(
    server: &Server,
    from: std::net::IpAddr,
    path: &str,
    within: Duration,
) -> Result<(Duration, Response), String> {
    let started = Instant::now();
    let stream =
        connect_from(from, server.addr, None).map_err(|e| format!("connect for {path}: {e}"))?;
    let mut c = HttpConn::from_stream(stream);
    c.try_send(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("send {path}: {e}"))?;
    let r = c.try_read_response(within)?;
    Ok((started.elapsed(), r))
}

/// What [`RawWs::recv_within`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    Frame(Frame),
    /// Nothing complete arrived in time.
    Quiet,
    /// The server closed the TCP connection (or reset it).
    Eof,
}

impl RawWs {
    /// The next frame if one arrives within `within`.
    pub fn recv_within(&mut self, within: Duration) -> Polled {
        let deadline = Instant::now() + within;
        loop {
            let (n, frame) = match self.ws.read(&mut self.conn.buf) {
                Ok((n, ev)) => (n, ev.map(Frame::from_event)),
                Err(e) => panic!("the server sent an invalid frame: {e:?}"),
            };
            self.conn.buf.drain(..n);
            if let Some(f) = frame {
                return Polled::Frame(f);
            }
            if n > 0 {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Polled::Quiet;
            }
            self.conn.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 64 * 1024];
            let r = self.conn.stream.read(&mut chunk);
            self.conn.stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            match r {
                Ok(0) => return Polled::Eof,
                Ok(n) => self.conn.buf.extend_from_slice(&chunk[..n]),
                Err(e) if is_closed(&e) => return Polled::Eof,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Polled::Quiet
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

/// Reads events until one of type `kind` or `deadline`; an error says why.
pub fn try_read_event_of(
    ws: &mut Ws,
    kind: &str,
    deadline: Instant,
) -> Result<serde_json::Value, String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no {kind} event in time"));
        }
        ws.get_mut().set_read_timeout(Some(left)).unwrap();
        let r = ws.read();
        ws.get_mut().set_read_timeout(Some(TIMEOUT)).unwrap();
        match r {
            Ok(tungstenite::Message::Text(t)) => {
                let ev: serde_json::Value =
                    serde_json::from_str(&t).map_err(|e| format!("event not JSON: {e}"))?;
                if ev["type"] == kind {
                    return Ok(ev);
                }
            }
            Ok(tungstenite::Message::Close(f)) => {
                return Err(format!("closed by the server: {f:?}"))
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                return Err(format!("no {kind} event in time"))
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

impl Bystanders {
    /// Like [`Bystanders::check`], but the round trip (Alice sends, both
    /// receive) must complete within `within`; returns how long it took.
    /// Alice and Bob take turns sending, so each stays far under the
    /// per-connection rate limit.
    pub fn try_check(&mut self, within: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let deadline = started + within;
        self.n += 1;
        let text = format!("still here {}", self.n);
        let (sender, other) = if self.n.is_multiple_of(2) {
            (&mut self.b, &mut self.a)
        } else {
            (&mut self.a, &mut self.b)
        };
        sender
            .send(tungstenite::Message::Text(text.clone()))
            .map_err(|e| format!("bystander send: {e}"))?;
        let es = try_read_event_of(sender, "message", deadline)
            .map_err(|e| format!("bystander sender: {e} after {:?}", started.elapsed()))?;
        let eo = try_read_event_of(other, "message", deadline)
            .map_err(|e| format!("bystander receiver: {e} after {:?}", started.elapsed()))?;
        if es["content"] != text.as_str() || eo["content"] != text.as_str() {
            return Err(format!("bystanders got {es} / {eo}, want {text:?}"));
        }
        if es["id"] != eo["id"] {
            return Err(format!("bystanders disagree on the id: {es} / {eo}"));
        }
        let id = es["id"].as_u64().ok_or("no numeric id")?;
        if let Some(last) = self.last_id {
            if id != last + 1 {
                return Err(format!(
                    "a bystander message id was skipped: {last} then {id}"
                ));
            }
        }
        self.last_id = Some(id);
        Ok(started.elapsed())
    }
}
