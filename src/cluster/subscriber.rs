//! A subscribed Redis connection on a plain `TcpStream`, speaking just enough RESP2 for pub/sub,
//! sharded pub/sub (`SSUBSCRIBE`, Redis 7) included, which the sync `redis` crate cannot do.
//!
//! [`connect`] gives two halves of one connection: the [`Subscriber`], read by one thread that
//! blocks in [`Subscriber::next`], and a cloneable [`SubHandle`] through which any thread sends
//! `SUBSCRIBE`/`SSUBSCRIBE`/`SUNSUBSCRIBE`/`PING` (a `try_clone` of the socket behind a `Mutex`,
//! so commands never interleave on the wire). The reader keeps what it has read and decodes only
//! complete frames: a read timeout in the middle of a frame loses nothing, it is "silence" to the
//! caller, who calls again.
//!
//! What it leaves to others: which shard to subscribe on (`slots`), authentication, reconnecting
//! and resubscribing after an error, a `MOVED` or an `Unsubscribed` push (a slot that migrated).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The largest bulk string accepted (a channel name or a payload); Redis allows 512 MiB, our
/// messages are a few KiB.
const MAX_BULK: usize = 64 << 20;
/// The largest frame held while incomplete: one push carries at most a few bulks of which only
/// the payload can be large; past this the peer is not speaking pub/sub, and the caller reconnects.
const MAX_FRAME: usize = MAX_BULK + (64 << 10);
/// A header line (`*3`, `$5`, `:1`) longer than this is not RESP.
const MAX_HEADER: usize = 32;
/// The longest simple string or error line (`-MOVED 1 host:port`, `-ERR ...`).
const MAX_LINE: usize = 4096;
/// Most elements in one array, and deepest nesting: pub/sub pushes are flat arrays of 2 to 4.
const MAX_ELEMENTS: usize = 64;
const MAX_DEPTH: usize = 4;
/// How much to read at a time.
const READ_CHUNK: usize = 16 << 10;

/// What comes on a subscribed connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Push {
    /// `message`, `smessage` (and `pmessage`, its pattern dropped).
    Message { channel: Vec<u8>, payload: Vec<u8> },
    /// `subscribe`/`ssubscribe`/`psubscribe` confirmed; `count`: this connection's subscriptions
    /// of that kind.
    Subscribed { channel: Vec<u8>, count: i64 },
    /// `unsubscribe`/`sunsubscribe`/`punsubscribe`: an answer to ours, or (for shard channels)
    /// Redis dropping the subscription because the channel's slot left this node. `channel` is
    /// empty when Redis unsubscribes "all" of none.
    Unsubscribed { channel: Vec<u8>, count: i64 },
    /// The answer to [`SubHandle::ping`].
    Pong,
    /// An error reply, without its `-`: `MOVED 7365 127.0.0.1:7101` for an `SSUBSCRIBE` sent to
    /// the wrong shard (see `slots::parse_redirect`), `CROSSSLOT ...`, `ERR ...`.
    Error(String),
}

/// A RESP2 value as read off the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Resp {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Int(i64),
    /// `None`: the null bulk string (`$-1`).
    Bulk(Option<Vec<u8>>),
    /// `None`: the null array (`*-1`).
    Array(Option<Vec<Resp>>),
}

/// The outcome of decoding the front of a buffer (STYLE §3: "need more" is not an error).
#[derive(Debug, PartialEq, Eq)]
enum Decoded<T> {
    /// A value and the bytes it took.
    Frame(T, usize),
    NeedMore,
}

/// Why the bytes are not a pub/sub conversation; the connection is then unusable.
#[derive(Debug, PartialEq, Eq)]
enum RespError {
    /// An unknown type byte, a bad length or integer, a missing CRLF.
    Syntax,
    /// Over [`MAX_BULK`], [`MAX_ELEMENTS`], [`MAX_DEPTH`], [`MAX_HEADER`] or [`MAX_LINE`].
    TooBig,
}

impl From<RespError> for io::Error {
    fn from(e: RespError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, format!("RESP: {e:?}"))
    }
}

/// The line at the front of `buf` (without CRLF) and the bytes it took with its CRLF.
/// A line longer than `max` is refused as soon as `max + 2` bytes show no CRLF, so that a peer
/// dribbling an endless line costs one bounded scan per read.
fn line(buf: &[u8], max: usize) -> Result<Decoded<&[u8]>, RespError> {
    let window = &buf[..buf.len().min(max + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => Ok(Decoded::Frame(&buf[..end], end + 2)),
        None if window.len() == max + 2 => Err(RespError::TooBig),
        None => Ok(Decoded::NeedMore),
    }
}

fn number(digits: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(RespError::Syntax)
}

/// Decodes one value from the front of `buf` (RESP2: `+ - : $ *`).
fn decode(buf: &[u8], depth: usize) -> Result<Decoded<Resp>, RespError> {
    let Some(&kind) = buf.first() else {
        return Ok(Decoded::NeedMore);
    };
    let max = if matches!(kind, b'+' | b'-') {
        MAX_LINE
    } else {
        MAX_HEADER
    };
    let (head, used) = match line(&buf[1..], max)? {
        Decoded::Frame(head, n) => (head, n + 1),
        Decoded::NeedMore => return Ok(Decoded::NeedMore),
    };
    let value = match kind {
        b'+' => Resp::Simple(head.to_vec()),
        b'-' => Resp::Error(head.to_vec()),
        b':' => Resp::Int(number(head)?),
        b'$' => {
            let len = number(head)?;
            if len == -1 {
                return Ok(Decoded::Frame(Resp::Bulk(None), used));
            }
            let len = usize::try_from(len).map_err(|_| RespError::Syntax)?;
            if len > MAX_BULK {
                return Err(RespError::TooBig);
            }
            let Some(body) = buf.get(used..used + len + 2) else {
                return Ok(Decoded::NeedMore);
            };
            if &body[len..] != b"\r\n" {
                return Err(RespError::Syntax);
            }
            return Ok(Decoded::Frame(
                Resp::Bulk(Some(body[..len].to_vec())),
                used + len + 2,
            ));
        }
        b'*' => {
            let n = number(head)?;
            if n == -1 {
                return Ok(Decoded::Frame(Resp::Array(None), used));
            }
            let n = usize::try_from(n).map_err(|_| RespError::Syntax)?;
            if n > MAX_ELEMENTS || depth >= MAX_DEPTH {
                return Err(RespError::TooBig);
            }
            let mut items = Vec::with_capacity(n);
            let mut at = used;
            for _ in 0..n {
                match decode(&buf[at..], depth + 1)? {
                    Decoded::Frame(v, k) => {
                        items.push(v);
                        at += k;
                    }
                    Decoded::NeedMore => return Ok(Decoded::NeedMore),
                }
            }
            return Ok(Decoded::Frame(Resp::Array(Some(items)), at));
        }
        _ => return Err(RespError::Syntax),
    };
    Ok(Decoded::Frame(value, used))
}

/// What a decoded value means on a subscribed connection; `None` for what we do not know (a push
/// kind of a later Redis), which is skipped.
fn push_of(v: Resp) -> Option<Push> {
    let items = match v {
        Resp::Error(e) => return Some(Push::Error(String::from_utf8_lossy(&e).into_owned())),
        Resp::Simple(s) if s.eq_ignore_ascii_case(b"PONG") => return Some(Push::Pong),
        Resp::Array(Some(items)) => items,
        _ => return None,
    };
    let mut it = items.into_iter();
    let Some(Resp::Bulk(Some(kind))) = it.next() else {
        return None;
    };
    let mut rest: Vec<Resp> = it.collect();
    let bytes = |v: &mut Resp| match v {
        Resp::Bulk(Some(b)) | Resp::Simple(b) => Some(std::mem::take(b)),
        Resp::Bulk(None) => Some(Vec::new()),
        _ => None,
    };
    let int = |v: &Resp| match v {
        Resp::Int(i) => Some(*i),
        _ => None,
    };
    match (kind.as_slice(), rest.as_mut_slice()) {
        (b"message" | b"smessage", [channel, payload]) | (b"pmessage", [_, channel, payload]) => {
            Some(Push::Message {
                channel: bytes(channel)?,
                payload: bytes(payload)?,
            })
        }
        (b"subscribe" | b"ssubscribe" | b"psubscribe", [channel, count]) => {
            Some(Push::Subscribed {
                count: int(count)?,
                channel: bytes(channel)?,
            })
        }
        (b"unsubscribe" | b"sunsubscribe" | b"punsubscribe", [channel, count]) => {
            Some(Push::Unsubscribed {
                count: int(count)?,
                channel: bytes(channel)?,
            })
        }
        (b"pong", [_]) => Some(Push::Pong),
        _ => None,
    }
}

/// The reading half: one thread calls [`Subscriber::next`].
pub(crate) struct Subscriber {
    stream: TcpStream,
    /// Bytes read and not yet decoded, from `start`.
    /// INVARIANT: `buf[start..]` holds no complete frame between calls to `next`, and is at most
    /// `limit` long (else `next` fails).
    buf: Vec<u8>,
    start: usize,
    /// [`MAX_FRAME`]; lower in tests.
    limit: usize,
}

/// The sending half; clones share the connection.
#[derive(Clone)]
pub(crate) struct SubHandle {
    stream: Arc<Mutex<TcpStream>>,
}

/// Connects to `addr` (`host:port`, or `redis://host:port`), each address tried within
/// `timeout`, which also bounds every write and, until [`Subscriber::set_read_timeout`], reads.
pub(crate) fn connect(addr: &str, timeout: Duration) -> io::Result<(Subscriber, SubHandle)> {
    let addr = addr.strip_prefix("redis://").unwrap_or(addr);
    let addr = addr.split('/').next().unwrap_or(addr);
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "address resolves to nothing");
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(timeout))?;
                stream.set_write_timeout(Some(timeout))?;
                let writer = stream.try_clone()?;
                return Ok((
                    Subscriber {
                        stream,
                        buf: Vec::new(),
                        start: 0,
                        limit: MAX_FRAME,
                    },
                    SubHandle {
                        stream: Arc::new(Mutex::new(writer)),
                    },
                ));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl Subscriber {
    /// How long [`Subscriber::next`] waits for bytes before answering "silence"; `None`: forever.
    pub(crate) fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(d)
    }

    /// The next push. A read timeout comes back as `TimedOut` or `WouldBlock` (silence: call
    /// again, nothing is lost); the end of the connection as `UnexpectedEof`; a peer not speaking
    /// RESP, or a frame over [`MAX_FRAME`], as `InvalidData`. After any other error the
    /// connection is done.
    pub(crate) fn next(&mut self) -> io::Result<Push> {
        loop {
            while let Decoded::Frame(v, used) = decode(&self.buf[self.start..], 0)? {
                self.start += used;
                if let Some(p) = push_of(v) {
                    return Ok(p);
                }
            }
            if self.buf.len() - self.start > self.limit {
                return Err(RespError::TooBig.into());
            }
            self.buf.drain(..self.start);
            self.start = 0;
            let have = self.buf.len();
            self.buf.resize(have + READ_CHUNK, 0);
            let n = self.stream.read(&mut self.buf[have..]);
            self.buf.truncate(have + *n.as_ref().unwrap_or(&0));
            match n {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "Redis closed the connection",
                    ))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// `*N $len arg ...`: a command as Redis reads it.
fn encode(cmd: &str, args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n${}\r\n{cmd}\r\n", args.len() + 1, cmd.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl SubHandle {
    fn send(&self, cmd: &str, args: &[&[u8]]) -> io::Result<()> {
        let bytes = encode(cmd, args);
        let mut s = self
            .stream
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        s.write_all(&bytes)
    }

    /// `SSUBSCRIBE`: every channel must be in one slot, served by this node (else `CROSSSLOT` or
    /// `MOVED` comes back as [`Push::Error`]). Nothing is sent for no channels.
    pub(crate) fn ssubscribe(&self, channels: &[&[u8]]) -> io::Result<()> {
        if channels.is_empty() {
            return Ok(());
        }
        self.send("SSUBSCRIBE", channels)
    }

    /// `SUNSUBSCRIBE`; no channels: all shard channels.
    pub(crate) fn sunsubscribe(&self, channels: &[&[u8]]) -> io::Result<()> {
        self.send("SUNSUBSCRIBE", channels)
    }

    /// `SUBSCRIBE` (cluster-wide channels); nothing is sent for no channels.
    #[cfg(test)]
    pub(crate) fn subscribe(&self, channels: &[&[u8]]) -> io::Result<()> {
        if channels.is_empty() {
            return Ok(());
        }
        self.send("SUBSCRIBE", channels)
    }

    /// `PING`, answered by [`Push::Pong`]: proof that the connection still works.
    pub(crate) fn ping(&self) -> io::Result<()> {
        self.send("PING", &[])
    }

    /// Closes the connection both ways: the reader's `next` returns an error at once.
    pub(crate) fn shutdown(&self) {
        let s = self
            .stream
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = s.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Result<Decoded<Resp>, RespError> {
        decode(bytes, 0)
    }

    fn bulk(b: &[u8]) -> Resp {
        Resp::Bulk(Some(b.to_vec()))
    }

    #[test]
    fn decodes_each_type() {
        let nested = Resp::Array(Some(vec![
            Resp::Int(1),
            Resp::Array(Some(vec![bulk(b"x")])),
        ]));
        let cases: &[(&[u8], Resp)] = &[
            (b"+OK\r\n", Resp::Simple(b"OK".to_vec())),
            (b"-ERR no\r\n", Resp::Error(b"ERR no".to_vec())),
            (b":-12\r\n", Resp::Int(-12)),
            (b"$3\r\na\r\n\r\n", bulk(b"a\r\n")),
            (b"$0\r\n\r\n", bulk(b"")),
            (b"$-1\r\n", Resp::Bulk(None)),
            (b"*-1\r\n", Resp::Array(None)),
            (b"*0\r\n", Resp::Array(Some(vec![]))),
            (b"*2\r\n:1\r\n*1\r\n$1\r\nx\r\n", nested),
        ];
        for (bytes, want) in cases {
            // What follows a frame is left for the next one.
            let with_tail = [bytes, &b"+next"[..]].concat();
            assert_eq!(
                one(&with_tail),
                Ok(Decoded::Frame(want.clone(), bytes.len())),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn every_prefix_needs_more() {
        let frame = b"*3\r\n$8\r\nsmessage\r\n$4\r\nroom\r\n$11\r\nhello world\r\n";
        for n in 0..frame.len() {
            assert_eq!(one(&frame[..n]), Ok(Decoded::NeedMore), "prefix {n}");
        }
        assert!(matches!(one(frame), Ok(Decoded::Frame(_, n)) if n == frame.len()));
    }

    #[test]
    fn refuses_what_is_not_resp_or_too_big() {
        assert_eq!(one(b"?x\r\n"), Err(RespError::Syntax));
        assert_eq!(one(b":x\r\n"), Err(RespError::Syntax));
        assert_eq!(one(b"$-2\r\n"), Err(RespError::Syntax));
        assert_eq!(one(b"$1\r\nab\r\n"), Err(RespError::Syntax));
        assert_eq!(one(b"$67108865\r\n"), Err(RespError::TooBig));
        assert_eq!(one(b"*65\r\n"), Err(RespError::TooBig));
        assert_eq!(
            one(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n"),
            Err(RespError::TooBig)
        );
        assert_eq!(one(&[b'$'; 40]), Err(RespError::TooBig));
        assert_eq!(one(&[b'-'; MAX_LINE + 3]), Err(RespError::TooBig));
        assert_eq!(one(&[b'-'; MAX_LINE]), Ok(Decoded::NeedMore));
        // A big bulk is fine until it is complete.
        assert_eq!(one(b"$67108864\r\nabc"), Ok(Decoded::NeedMore));
    }

    fn pushes(bytes: &[u8]) -> Vec<Push> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Decoded::Frame(v, n) = decode(&bytes[at..], 0).unwrap() {
            at += n;
            out.extend(push_of(v));
        }
        assert_eq!(at, bytes.len(), "all decoded");
        out
    }

    #[test]
    fn pushes_of_every_kind() {
        let wire = b"*3\r\n$10\r\nssubscribe\r\n$1\r\na\r\n:1\r\n\
            *3\r\n$9\r\nsubscribe\r\n$1\r\ng\r\n:1\r\n\
            *3\r\n$8\r\nsmessage\r\n$1\r\na\r\n$2\r\nhi\r\n\
            *3\r\n$7\r\nmessage\r\n$1\r\ng\r\n$0\r\n\r\n\
            *4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$1\r\nr\r\n$1\r\np\r\n\
            *2\r\n$4\r\npong\r\n$0\r\n\r\n\
            +PONG\r\n\
            -MOVED 7365 127.0.0.1:7101\r\n\
            *3\r\n$12\r\nsunsubscribe\r\n$1\r\na\r\n:0\r\n\
            *3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n\
            *3\r\n$7\r\nfuture!\r\n$1\r\nx\r\n:0\r\n\
            *3\r\n$7\r\nmessage\r\n:1\r\n$1\r\nx\r\n";
        let ch = |c: &[u8]| c.to_vec();
        assert_eq!(
            pushes(wire),
            vec![
                Push::Subscribed {
                    channel: ch(b"a"),
                    count: 1
                },
                Push::Subscribed {
                    channel: ch(b"g"),
                    count: 1
                },
                Push::Message {
                    channel: ch(b"a"),
                    payload: ch(b"hi")
                },
                Push::Message {
                    channel: ch(b"g"),
                    payload: ch(b"")
                },
                Push::Message {
                    channel: ch(b"r"),
                    payload: ch(b"p")
                },
                Push::Pong,
                Push::Pong,
                Push::Error("MOVED 7365 127.0.0.1:7101".into()),
                Push::Unsubscribed {
                    channel: ch(b"a"),
                    count: 0
                },
                Push::Unsubscribed {
                    channel: ch(b""),
                    count: 0
                },
            ]
        );
    }

    #[test]
    fn encodes_commands() {
        assert_eq!(
            encode("SSUBSCRIBE", &[b"a", b"{r}x"]),
            b"*3\r\n$10\r\nSSUBSCRIBE\r\n$1\r\na\r\n$4\r\n{r}x\r\n"
        );
        assert_eq!(encode("PING", &[]), b"*1\r\n$4\r\nPING\r\n");
    }

    /// A fake server: what it writes, the subscriber reads, in whatever pieces.
    fn pair() -> (Subscriber, SubHandle, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (sub, handle) = connect(&addr, Duration::from_secs(5)).unwrap();
        let (server, _) = l.accept().unwrap();
        (sub, handle, server)
    }

    #[test]
    fn a_timeout_mid_frame_loses_nothing() {
        let (mut sub, _h, mut server) = pair();
        sub.set_read_timeout(Some(Duration::from_millis(30)))
            .unwrap();
        let frame = b"*3\r\n$8\r\nsmessage\r\n$4\r\nroom\r\n$5\r\nhello\r\n";
        for piece in frame.chunks(7) {
            server.write_all(piece).unwrap();
            server.flush().unwrap();
            if piece.len() == 7 {
                let e = sub.next().expect_err("silence mid-frame");
                assert!(
                    matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ),
                    "{e}"
                );
            }
        }
        assert_eq!(
            sub.next().unwrap(),
            Push::Message {
                channel: b"room".to_vec(),
                payload: b"hello".to_vec()
            }
        );
    }

    #[test]
    fn many_frames_in_one_read_come_one_by_one() {
        let (mut sub, _h, mut server) = pair();
        let mut wire = Vec::new();
        for i in 0..100 {
            let p = format!("{i}");
            wire.extend_from_slice(
                format!("*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n${}\r\n{p}\r\n", p.len()).as_bytes(),
            );
        }
        server.write_all(&wire).unwrap();
        for i in 0..100 {
            assert_eq!(
                sub.next().unwrap(),
                Push::Message {
                    channel: b"c".to_vec(),
                    payload: format!("{i}").into_bytes()
                }
            );
        }
    }

    #[test]
    fn commands_reach_the_server_and_shutdown_ends_the_reader() {
        let (mut sub, h, mut server) = pair();
        let h2 = h.clone();
        h.ssubscribe(&[b"a"]).unwrap();
        h2.ping().unwrap();
        h.ssubscribe(&[]).unwrap();
        h.sunsubscribe(&[]).unwrap();
        let want = [
            &encode("SSUBSCRIBE", &[b"a"])[..],
            &encode("PING", &[]),
            &encode("SUNSUBSCRIBE", &[]),
        ]
        .concat();
        let mut got = vec![0; want.len()];
        server.read_exact(&mut got).unwrap();
        assert_eq!(got, want);
        h2.shutdown();
        let e = sub.next().expect_err("shut down");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }

    #[test]
    fn a_frame_over_the_limit_is_refused() {
        let (mut sub, _h, mut server) = pair();
        sub.limit = 1000;
        // Two bulks, each under MAX_BULK, together over the limit, the second never complete.
        let mut wire = b"*3\r\n$7\r\nmessage\r\n$600\r\n".to_vec();
        wire.extend_from_slice(&[b'c'; 600]);
        wire.extend_from_slice(b"\r\n$600\r\n");
        wire.extend_from_slice(&[b'p'; 500]);
        server.write_all(&wire).unwrap();
        let e = sub.next().expect_err("too big");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

    proptest::proptest! {
        /// Whatever Redis (or something pretending to be it) sends, the decoder answers, refuses
        /// or asks for more: it never panics, and what it takes is never more than it was given.
        #[test]
        fn any_bytes_decode_or_are_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            if let Ok(Decoded::Frame(v, used)) = decode(&bytes, 0) {
                proptest::prop_assert!(used <= bytes.len());
                let _ = push_of(v);
            }
        }

        /// Valid frames cut anywhere: the first part needs more, the whole decodes.
        #[test]
        fn a_push_cut_anywhere_needs_more(channel in "[a-z{}:]{1,20}", payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100), cut in 0usize..1000) {
            let mut frame = format!("*3\r\n$8\r\nsmessage\r\n${}\r\n{channel}\r\n${}\r\n", channel.len(), payload.len()).into_bytes();
            frame.extend_from_slice(&payload);
            frame.extend_from_slice(b"\r\n");
            let cut = cut % frame.len();
            proptest::prop_assert!(matches!(decode(&frame[..cut], 0), Ok(Decoded::NeedMore)));
            match decode(&frame, 0) {
                Ok(Decoded::Frame(v, used)) => {
                    proptest::prop_assert_eq!(used, frame.len());
                    proptest::prop_assert_eq!(push_of(v), Some(Push::Message { channel: channel.into_bytes(), payload }));
                }
                other => proptest::prop_assert!(false, "{:?}", other),
            }
        }
    }
}
