//! `wisp client URL`: a terminal client on the project's own client side.
//!
//! Reads lines from stdin and sends each as a text message; prints every
//! message the server sends. Blocking I/O on two threads is plenty for one
//! human at a keyboard; the codec is the same one the load generator uses.

use std::io::{self, BufRead, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::protocol::client::{check_response, encode_masked, request, MaskRng};
use crate::protocol::close::write_close_payload;
use crate::protocol::{CloseCode, Decoded, Event, OpCode, Role, WebSocket};

/// Splits `ws://host:port/path` into (`host:port`, `/path`).
pub fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or("only ws:// URLs are supported")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    let host = if host.contains(':') && !host.ends_with(']') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    Ok((host, path.to_string()))
}

/// Connects, then pumps stdin lines out and server messages to stdout until either side ends.
pub fn run(url: &str) -> Result<(), String> {
    let (host, path) = split_url(url)?;
    let mut stream = TcpStream::connect(&host).map_err(|e| format!("connect {host}: {e}"))?;
    let mut rng = MaskRng::from_os();
    let key = rng.key();
    stream
        .write_all(&request(&host, &path, &key))
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    let head = loop {
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("server closed during the handshake".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match check_response(&buf, &key) {
            Ok(Decoded::Done(len)) => break len,
            Ok(Decoded::NeedMore) => continue,
            Err(e) => return Err(format!("handshake refused: {e:?}")),
        }
    };
    buf.drain(..head);
    eprintln!("connected to {url}; type a line and press enter to send, ctrl-d to quit");

    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    // Set when stdin ended and we sent our close: the server's close is then its answer to ours.
    let we_closed = Arc::new(AtomicBool::new(false));
    let closing = Arc::clone(&we_closed);
    let sender = std::thread::spawn(move || {
        let mut rng = MaskRng::from_os();
        let mut out = Vec::new();
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            out.clear();
            encode_masked(&mut out, OpCode::Text, line.as_bytes(), rng.mask());
            if writer.write_all(&out).is_err() {
                return;
            }
        }
        let mut payload = [0u8; 125];
        let n = write_close_payload(CloseCode::Normal, "bye", &mut payload);
        closing.store(true, Ordering::SeqCst);
        out.clear();
        encode_masked(&mut out, OpCode::Close, &payload[..n], rng.mask());
        let _ = writer.write_all(&out);
    });

    let mut ws = WebSocket::new(Role::Client, 64 << 20);
    let stdout = io::stdout();
    let mut reported = false;
    'outer: loop {
        loop {
            let (n, event) = ws
                .read(&mut buf)
                .map_err(|e| format!("protocol error from server: {e}"))?;
            match event {
                Some(Event::Text(t)) => {
                    let _ = writeln!(stdout.lock(), "{t}");
                }
                Some(Event::Binary(b)) => {
                    let _ = writeln!(stdout.lock(), "<{} binary bytes>", b.len());
                }
                Some(Event::Ping(p)) => {
                    let mut out = Vec::new();
                    encode_masked(&mut out, OpCode::Pong, p, rng.mask());
                    let _ = stream.write_all(&out);
                }
                Some(Event::Pong(_)) => {}
                Some(Event::Compressed(..)) => {
                    unreachable!("bug: a compressed message without deflate offered")
                }
                Some(Event::Close { code, reason }) => {
                    let code = code.map_or(1005, CloseCode::as_u16);
                    if we_closed.load(Ordering::SeqCst) {
                        eprintln!("end of input: closed the connection ({code})");
                    } else {
                        eprintln!("closed by server: {code} {reason}");
                    }
                    reported = true;
                    break 'outer;
                }
                None => {}
            }
            buf.drain(..n);
            if n == 0 {
                break;
            }
        }
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if !reported {
        if we_closed.load(Ordering::SeqCst) {
            eprintln!("end of input: closed the connection");
        } else {
            eprintln!("the server closed the connection without a close frame");
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    drop(sender);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("ws://127.0.0.1:8000/ws/a/b").unwrap(),
            ("127.0.0.1:8000".into(), "/ws/a/b".into())
        );
        assert_eq!(
            split_url("ws://example").unwrap(),
            ("example:80".into(), "/".into())
        );
        assert!(split_url("http://x/").is_err());
    }
}
