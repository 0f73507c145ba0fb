//! floor: the cheapest WebSocket fan-out this machine can do.
//!
//! A comparison peer for the Wisp benchmarks that stands for "the kernel's
//! loopback TCP with nothing on top": one thread, one mio (epoll,
//! edge-triggered) poll loop, no chat, no JSON, no history, no timers.
//!
//! - Accepts, answers the upgrade on any path (only Sec-WebSocket-Key is
//!   looked at), then reads frames until WouldBlock.
//! - A complete text or binary message is re-framed ONCE into an unmasked
//!   server frame (`Rc<[u8]>`) and queued to every open connection of the
//!   same group: `/echo` = just the sender; `/ws/{room}/{client}` = every
//!   connection of `/ws/{room}`; any other path = every connection on that
//!   exact path (so `/ws` is the global channel).
//! - Output: each connection has a queue of shared frames, written with
//!   vectored writes until WouldBlock; what is left waits for the next
//!   WRITABLE edge. By default queued output is flushed once per poll turn
//!   (after all ready events are handled, as Wisp does); `--immediate`
//!   writes each frame to each recipient as soon as it is produced.
//! - Ping gets a pong, close gets a close, and the connection is dropped.
//!
//! Usage: floor [ADDR | --bind ADDR] [--immediate]

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);
const READ_BUF: usize = 64 * 1024;
const MAX_MESSAGE: usize = 16 << 20;
const MAX_HEAD: usize = 8 * 1024;
const MAX_IOV: usize = 64;
const ECHO: usize = usize::MAX;

struct Conn {
    stream: TcpStream,
    open: bool,
    /// Group index (ECHO for /echo) and position in that group's member list.
    group: usize,
    pos: usize,
    /// Bytes of an incomplete request head or frame.
    inbuf: Vec<u8>,
    /// Fragmented message being reassembled (opcode, payload).
    frag: Option<(u8, Vec<u8>)>,
    /// Pending output: shared frames and the offset into the first one.
    out: VecDeque<Rc<[u8]>>,
    out_off: usize,
    dirty: bool,
    dead: bool,
    /// Close after the pending output is written.
    closing: bool,
}

struct Server {
    poll: Poll,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    groups: Vec<Vec<usize>>,
    group_ids: HashMap<String, usize>,
    dirty: Vec<usize>,
    dead: Vec<usize>,
    immediate: bool,
}

/// What parsing one connection's input produced, delivered afterwards.
enum Out {
    /// A frame for everyone in the sender's group.
    Fanout(Rc<[u8]>),
    /// A frame for the sender only (pong, close, echo, handshake answer).
    Reply(Rc<[u8]>),
    Upgraded(String),
    Close,
}

fn main() {
    let mut bind = String::from("127.0.0.1:0");
    let mut immediate = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bind" => bind = args.next().expect("--bind needs an address"),
            "--immediate" => immediate = true,
            "-h" | "--help" => {
                println!("usage: floor [ADDR | --bind ADDR] [--immediate]");
                return;
            }
            other if !other.starts_with('-') => bind = other.to_string(),
            other => {
                eprintln!("floor: unknown option {other}");
                std::process::exit(2);
            }
        }
    }
    let addr: SocketAddr = bind.parse().expect("bad bind address");
    let mut listener = TcpListener::bind(addr).expect("bind");
    let poll = Poll::new().expect("poll");
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .unwrap();
    let mode = if immediate {
        "immediate"
    } else {
        "batched per poll turn"
    };
    println!(
        "listening on http://{}/ (floor, {mode})",
        listener.local_addr().unwrap()
    );
    let mut srv = Server {
        poll,
        conns: Vec::new(),
        free: Vec::new(),
        groups: Vec::new(),
        group_ids: HashMap::new(),
        dirty: Vec::new(),
        dead: Vec::new(),
        immediate,
    };
    let mut events = Events::with_capacity(1024);
    let mut rbuf = vec![0u8; READ_BUF];
    let mut outs = Vec::new();
    loop {
        if let Err(e) = srv.poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            panic!("poll: {e}");
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                srv.accept(&mut listener);
                continue;
            }
            let id = ev.token().0;
            if ev.is_writable() {
                srv.flush(id);
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                srv.read(id, &mut rbuf, &mut outs);
            }
        }
        for id in std::mem::take(&mut srv.dirty) {
            if let Some(c) = srv.conns[id].as_mut() {
                c.dirty = false;
            }
            srv.flush(id);
        }
        for id in std::mem::take(&mut srv.dead) {
            srv.remove(id);
        }
    }
}

impl Server {
    fn accept(&mut self, listener: &mut TcpListener) {
        loop {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let id = self.free.pop().unwrap_or_else(|| {
                        self.conns.push(None);
                        self.conns.len() - 1
                    });
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, Token(id), interest)
                        .is_err()
                    {
                        self.free.push(id);
                        continue;
                    }
                    self.conns[id] = Some(Conn {
                        stream,
                        open: false,
                        group: ECHO,
                        pos: 0,
                        inbuf: Vec::new(),
                        frag: None,
                        out: VecDeque::new(),
                        out_off: 0,
                        dirty: false,
                        dead: false,
                        closing: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("accept: {e}");
                    return;
                }
            }
        }
    }

    /// Read until WouldBlock, parse, then deliver what was produced.
    fn read(&mut self, id: usize, rbuf: &mut [u8], outs: &mut Vec<Out>) {
        let Some(c) = self.conns[id].as_mut() else {
            return;
        };
        if c.dead {
            return;
        }
        let mut eof = false;
        loop {
            match c.stream.read(rbuf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    if c.inbuf.is_empty() {
                        let used = c.parse(&mut rbuf[..n], outs);
                        if used < n && !c.closing {
                            c.inbuf.extend_from_slice(&rbuf[used..n]);
                        }
                    } else {
                        c.inbuf.extend_from_slice(&rbuf[..n]);
                        let mut buf = std::mem::take(&mut c.inbuf);
                        let used = c.parse(&mut buf, outs);
                        buf.drain(..used);
                        c.inbuf = buf;
                    }
                    if c.closing || c.inbuf.len() > MAX_MESSAGE + 14 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        for o in outs.drain(..) {
            match o {
                Out::Reply(f) => self.queue(id, f, true),
                Out::Fanout(f) => {
                    let g = self.conns[id].as_ref().unwrap().group;
                    if g == ECHO {
                        self.queue(id, f, false);
                    } else {
                        for i in 0..self.groups[g].len() {
                            let to = self.groups[g][i];
                            self.queue(to, f.clone(), false);
                        }
                    }
                }
                Out::Upgraded(path) => self.join(id, &path),
                Out::Close => {
                    let c = self.conns[id].as_mut().unwrap();
                    c.closing = true;
                    self.mark_dirty(id);
                }
            }
        }
        if eof {
            self.kill(id);
        }
    }

    fn join(&mut self, id: usize, path: &str) {
        let path = path.split('?').next().unwrap_or("");
        if path == "/echo" {
            return;
        }
        // /ws/{room}/{client}: the room is the group.
        let key = match path.strip_prefix("/ws/") {
            Some(rest) if rest.matches('/').count() == 1 => &path[..path.rfind('/').unwrap()],
            _ => path,
        };
        let g = match self.group_ids.get(key) {
            Some(&g) => g,
            None => {
                self.groups.push(Vec::new());
                self.group_ids
                    .insert(key.to_string(), self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        let c = self.conns[id].as_mut().unwrap();
        if c.dead {
            return;
        }
        c.group = g;
        c.pos = self.groups[g].len();
        self.groups[g].push(id);
    }

    /// Queue a frame; only a `reply` (pong, close, handshake answer) may
    /// still go to a connection that is closing.
    fn queue(&mut self, id: usize, frame: Rc<[u8]>, reply: bool) {
        let Some(c) = self.conns[id].as_mut() else {
            return;
        };
        if c.dead || (c.closing && !reply) {
            return;
        }
        c.out.push_back(frame);
        if self.immediate {
            self.flush(id);
        } else {
            self.mark_dirty(id);
        }
    }

    fn mark_dirty(&mut self, id: usize) {
        let c = self.conns[id].as_mut().unwrap();
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(id);
        }
    }

    /// Write pending output until it is gone or the socket would block.
    fn flush(&mut self, id: usize) {
        let Some(c) = self.conns[id].as_mut() else {
            return;
        };
        if c.dead {
            return;
        }
        while !c.out.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, f) in c.out.iter().take(MAX_IOV).enumerate() {
                iov[i] = IoSlice::new(if i == 0 { &f[c.out_off..] } else { &f[..] });
                n += 1;
            }
            match c.stream.write_vectored(&iov[..n]) {
                Ok(0) => return self.kill(id),
                Ok(mut w) => {
                    while w > 0 {
                        let left = c.out[0].len() - c.out_off;
                        if w >= left {
                            w -= left;
                            c.out.pop_front();
                            c.out_off = 0;
                        } else {
                            c.out_off += w;
                            w = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.kill(id),
            }
        }
        if c.closing {
            self.kill(id);
        }
    }

    /// Mark dead now (nothing more is queued to it); it leaves its group and
    /// is freed at the end of the turn.
    fn kill(&mut self, id: usize) {
        let Some(c) = self.conns[id].as_mut() else {
            return;
        };
        if c.dead {
            return;
        }
        c.dead = true;
        c.out.clear();
        self.dead.push(id);
    }

    /// Free a dead connection (end of turn, so no fan-out loop is running).
    fn remove(&mut self, id: usize) {
        if let Some(mut c) = self.conns[id].take() {
            if c.group != ECHO {
                let members = &mut self.groups[c.group];
                members.swap_remove(c.pos);
                if c.pos < members.len() {
                    let moved = members[c.pos];
                    self.conns[moved].as_mut().unwrap().pos = c.pos;
                }
            }
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.free.push(id);
        }
    }
}

impl Conn {
    /// Consume complete request heads / frames from `buf`; returns bytes used.
    fn parse(&mut self, buf: &mut [u8], outs: &mut Vec<Out>) -> usize {
        let mut at = 0;
        if !self.open {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let key = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
                        .map(|h| h.value);
                    let Some(key) = key else {
                        outs.push(Out::Reply(Rc::from(&b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"[..])));
                        outs.push(Out::Close);
                        self.closing = true;
                        return buf.len();
                    };
                    let mut sha = sha1_smol::Sha1::new();
                    sha.update(key);
                    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
                    use base64::Engine;
                    let accept =
                        base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes());
                    let resp = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                    );
                    outs.push(Out::Reply(Rc::from(resp.into_bytes().into_boxed_slice())));
                    outs.push(Out::Upgraded(req.path.unwrap_or("/").to_string()));
                    self.open = true;
                    at = n;
                }
                Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return 0,
                _ => {
                    self.closing = true;
                    outs.push(Out::Close);
                    return buf.len();
                }
            }
        }
        while !self.closing {
            let b = &mut buf[at..];
            if b.len() < 2 {
                break;
            }
            let (fin, op, masked) = (b[0] & 0x80 != 0, b[0] & 0x0f, b[1] & 0x80 != 0);
            let (len, mut hdr) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => (
                    u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if !masked || len > MAX_MESSAGE {
                outs.push(Out::Close);
                self.closing = true;
                break;
            }
            if b.len() < hdr + 4 + len {
                break;
            }
            let mask: [u8; 4] = b[hdr..hdr + 4].try_into().unwrap();
            hdr += 4;
            let payload = &mut b[hdr..hdr + len];
            unmask(payload, mask);
            at += hdr + len;
            match op {
                0x1 | 0x2 if fin => outs.push(Out::Fanout(frame(op, payload))),
                0x1 | 0x2 => self.frag = Some((op, payload.to_vec())),
                0x0 => {
                    let Some((fop, mut acc)) = self.frag.take() else {
                        continue;
                    };
                    acc.extend_from_slice(payload);
                    if fin {
                        outs.push(Out::Fanout(frame(fop, &acc)));
                    } else {
                        self.frag = Some((fop, acc));
                    }
                }
                0x8 => {
                    let code = if payload.len() >= 2 {
                        &payload[..2]
                    } else {
                        &[][..]
                    };
                    outs.push(Out::Reply(frame(0x8, code)));
                    outs.push(Out::Close);
                    self.closing = true;
                }
                0x9 => outs.push(Out::Reply(frame(0xA, payload))),
                _ => {}
            }
        }
        at
    }
}

/// An unmasked, final server frame holding `payload`.
fn frame(op: u8, payload: &[u8]) -> Rc<[u8]> {
    let n = payload.len();
    let mut v = Vec::with_capacity(n + 10);
    v.push(0x80 | op);
    if n < 126 {
        v.push(n as u8);
    } else if n <= 0xffff {
        v.push(126);
        v.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        v.push(127);
        v.extend_from_slice(&(n as u64).to_be_bytes());
    }
    v.extend_from_slice(payload);
    Rc::from(v.into_boxed_slice())
}

/// XOR the mask in, eight bytes at a time.
fn unmask(p: &mut [u8], mask: [u8; 4]) {
    let m8 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = p.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().unwrap()) ^ m8;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}
