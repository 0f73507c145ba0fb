//! tokio-peer: a comparison server for the Wisp benchmarks.
//!
//! The same endpoints and fan-out semantics as Wisp (SPEC §3, §4.1, §4.2),
//! written the way a tokio shop would write them: one task per connection,
//! tokio-tungstenite for the protocol, a per-connection unbounded mpsc of
//! `tungstenite::Message` drained by a writer task. A broadcast builds its
//! payload once; every recipient gets a clone of the same `Bytes`-backed
//! `Message` (a reference-count bump, no copy). Framing into each socket's
//! write buffer is tungstenite's per-connection job, as in any tungstenite app.
//!
//! Runtime: `current_thread` by default (one thread, like Wisp's single
//! reactor); `--threads N` (N >= 1) switches to the multi-thread runtime.
//!
//! Usage: tokio-peer [ADDR | --bind ADDR] [--threads N]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;
type Tx = UnboundedSender<Message>;

const TTL_S: u64 = 60;
const EPOCH: &str = "x";

// ---------------------------------------------------------------- shared state

#[derive(Default)]
struct Hub {
    next_conn: u64,
    global: HashMap<u64, Tx>,
    rooms: HashMap<String, Room>,
}

#[derive(Default)]
struct Room {
    next_id: u64,
    members: Vec<Member>,
}

struct Member {
    conn: u64,
    name: String,
    tx: Tx,
}

type SharedHub = Arc<Mutex<Hub>>;

impl Room {
    fn broadcast(&self, msg: &Message, except: Option<u64>) {
        for m in &self.members {
            if Some(m.conn) != except {
                let _ = m.tx.send(msg.clone());
            }
        }
    }
}

// ---------------------------------------------------------------- main

fn main() {
    let mut bind = String::from("127.0.0.1:0");
    let mut threads = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bind" => bind = args.next().expect("--bind needs an address"),
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--threads needs a number")
            }
            "-h" | "--help" => {
                println!("usage: tokio-peer [ADDR | --bind ADDR] [--threads N]");
                return;
            }
            other if !other.starts_with('-') => bind = other.to_string(),
            other => {
                eprintln!("tokio-peer: unknown option {other}");
                std::process::exit(2);
            }
        }
    }
    let rt = if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("runtime");
    rt.block_on(serve(bind, threads));
}

async fn serve(bind: String, threads: usize) {
    let addr: SocketAddr = bind.parse().expect("bad bind address");
    let listener = TcpListener::bind(addr).await.expect("bind");
    let local = listener.local_addr().unwrap();
    let mode = if threads == 0 {
        "current_thread".to_string()
    } else {
        format!("multi_thread x{threads}")
    };
    println!("listening on http://{local}/ (tokio {mode})");
    let hub: SharedHub = Arc::new(Mutex::new(Hub::default()));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            handle(stream, hub).await;
        });
    }
}

enum Route {
    Echo,
    Global,
    Room(String, String),
}

fn route(path: &str) -> Option<Route> {
    match path {
        "/echo" => return Some(Route::Echo),
        "/ws" => return Some(Route::Global),
        _ => {}
    }
    let rest = path.strip_prefix("/ws/")?;
    let mut it = rest.split('/');
    let (room, client) = (it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    Some(Route::Room(
        clean_name(room, "general"),
        clean_name(client, "anonymous"),
    ))
}

// The callback's signature (and its large Err) is tungstenite's.
#[allow(clippy::result_large_err)]
async fn handle(stream: TcpStream, hub: SharedHub) {
    let mut route_found = None;
    let cb = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        match route(req.uri().path()) {
            Some(r) => {
                route_found = Some(r);
                Ok(resp)
            }
            None => {
                let mut e = ErrorResponse::new(Some("not found".into()));
                *e.status_mut() = StatusCode::NOT_FOUND;
                Err(e)
            }
        }
    };
    let ws = match tokio_tungstenite::accept_hdr_async(stream, cb).await {
        Ok(ws) => ws,
        Err(_) => return,
    };
    match route_found {
        Some(Route::Echo) => echo(ws).await,
        Some(Route::Global) => global(ws, hub).await,
        Some(Route::Room(room, client)) => room_conn(ws, hub, room, client).await,
        None => {}
    }
}

// ---------------------------------------------------------------- endpoints

/// Echo: read a message, queue it back; flush once nothing more is ready
/// (so a pipelining client gets its echoes batched into few writes).
async fn echo(mut ws: Ws) {
    while let Some(Ok(msg)) = ws.next().await {
        if !is_data(&msg) {
            continue;
        }
        if ws.feed(msg).await.is_err() {
            return;
        }
        // Drain whatever is already readable without waiting.
        loop {
            match ws.next().now_or_never() {
                Some(Some(Ok(m))) => {
                    if is_data(&m) && ws.feed(m).await.is_err() {
                        return;
                    }
                }
                Some(_) => {
                    let _ = ws.flush().await;
                    return;
                }
                None => break,
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

fn is_data(m: &Message) -> bool {
    matches!(m, Message::Text(_) | Message::Binary(_))
}

/// The writer half of a connection: drains its mpsc, feeding every ready
/// message into tungstenite's write buffer before one flush.
async fn writer(
    mut sink: futures_util::stream::SplitSink<Ws, Message>,
    mut rx: UnboundedReceiver<Message>,
) {
    while let Some(m) = rx.recv().await {
        if sink.feed(m).await.is_err() {
            return;
        }
        while let Ok(m) = rx.try_recv() {
            if sink.feed(m).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

/// Global channel: every text message goes, unchanged, to every /ws client.
async fn global(ws: Ws, hub: SharedHub) {
    let (sink, mut stream) = ws.split();
    let (tx, rx) = unbounded_channel();
    let w = tokio::spawn(writer(sink, rx));
    let me = {
        let mut h = hub.lock().unwrap();
        h.next_conn += 1;
        let id = h.next_conn;
        h.global.insert(id, tx);
        id
    };
    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Text(t) => {
                let out = Message::Text(t); // same Bytes for every recipient
                let h = hub.lock().unwrap();
                for tx in h.global.values() {
                    let _ = tx.send(out.clone());
                }
            }
            Message::Binary(_) | Message::Close(_) => break,
            _ => {}
        }
    }
    hub.lock().unwrap().global.remove(&me); // drops tx: the writer closes
    let _ = w.await;
}

/// A room: JSON events, per-room ids, welcome on join, join/leave to others.
async fn room_conn(ws: Ws, hub: SharedHub, room_id: String, wanted: String) {
    let (sink, mut stream) = ws.split();
    let (tx, rx) = unbounded_channel();
    let w = tokio::spawn(writer(sink, rx));
    let (me, name) = {
        let mut h = hub.lock().unwrap();
        h.next_conn += 1;
        let me = h.next_conn;
        let room = h.rooms.entry(room_id.clone()).or_default();
        let mut name = wanted.clone();
        let mut n = 1;
        while room.members.iter().any(|m| m.name == name) {
            n += 1;
            name = format!("{wanted}#{n}");
        }
        room.members.push(Member {
            conn: me,
            name: name.clone(),
            tx: tx.clone(),
        });
        let mut users = Vec::with_capacity(room.members.len());
        for m in &room.members {
            users.push(m.name.as_str());
        }
        let welcome = format!(
            "{{\"type\":\"welcome\",\"room_id\":{},\"client_id\":{},\"users\":{},\"history\":[],\"ttl_s\":{TTL_S},\"epoch\":\"{EPOCH}\",\"recovered\":true}}",
            js(&room_id),
            js(&name),
            serde_json::to_string(&users).unwrap()
        );
        let _ = tx.send(Message::text(welcome));
        let join = presence("join", &room_id, &name);
        room.broadcast(&join, Some(me));
        (me, name)
    };
    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Text(t) => {
                let content = match extract_content(&t) {
                    Ok(c) => c,
                    Err(()) => {
                        let _ = tx.send(Message::text(
                            "{\"type\":\"error\",\"code\":\"bad_request\",\"message\":\"JSON object needs a string content\"}",
                        ));
                        continue;
                    }
                };
                let content = content.trim();
                if content.is_empty() {
                    continue;
                }
                let ts = timestamp_now();
                let mut h = hub.lock().unwrap();
                let Some(room) = h.rooms.get_mut(&room_id) else {
                    continue;
                };
                room.next_id += 1;
                let frame = format!(
                    "{{\"type\":\"message\",\"id\":{},\"room_id\":{},\"client_id\":{},\"content\":{},\"timestamp\":\"{ts}\"}}",
                    room.next_id,
                    js(&room_id),
                    js(&name),
                    js(content)
                );
                // Encoded once; every member gets the same Bytes.
                room.broadcast(&Message::Text(Utf8Bytes::from(frame)), None);
            }
            Message::Binary(_) | Message::Close(_) => break,
            _ => {}
        }
    }
    {
        let mut h = hub.lock().unwrap();
        if let Some(room) = h.rooms.get_mut(&room_id) {
            room.members.retain(|m| m.conn != me);
            if room.members.is_empty() {
                h.rooms.remove(&room_id);
            } else {
                room.broadcast(&presence("leave", &room_id, &name), None);
            }
        }
    }
    drop(tx);
    let _ = w.await;
}

fn presence(kind: &str, room: &str, client: &str) -> Message {
    Message::text(format!(
        "{{\"type\":\"{kind}\",\"room_id\":{},\"client_id\":{},\"timestamp\":\"{}\"}}",
        js(room),
        js(client),
        timestamp_now()
    ))
}

/// SPEC §4.4: text that parses as a JSON object must carry a string
/// `content`; any other text is the content itself.
fn extract_content(text: &str) -> Result<std::borrow::Cow<'_, str>, ()> {
    if text.trim_start().starts_with('{') {
        if let Ok(serde_json::Value::Object(mut o)) =
            serde_json::from_str::<serde_json::Value>(text)
        {
            return match o.remove("content") {
                Some(serde_json::Value::String(s)) => Ok(s.into()),
                _ => Err(()),
            };
        }
    }
    Ok(text.into())
}

// ---------------------------------------------------------------- helpers

/// A JSON string literal (quoted, escaped).
fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Percent-decode, drop control characters and '/', trim, cut to 64 chars.
fn clean_name(raw: &str, default: &str) -> String {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    let s = String::from_utf8_lossy(&out);
    let s: String = s.chars().filter(|c| !c.is_control() && *c != '/').collect();
    let s: String = s.trim().chars().take(64).collect();
    if s.is_empty() {
        default.to_string()
    } else {
        s
    }
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// RFC 3339 UTC with microseconds, e.g. 2026-11-21T10:00:00.123456Z.
fn timestamp_now() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let secs = d.as_secs();
    let (days, sod) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        d.subsec_micros()
    )
}
