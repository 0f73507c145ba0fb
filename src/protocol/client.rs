//! The client side of the same core, kept small: the opening request, the
//! check of the server's answer, and masked frames.
//!
//! Used by the load generator and `wisp client`, so the client half of the
//! codec is exercised by a real user path. Receiving uses
//! [`WebSocket`](super::websocket::WebSocket) with [`Role::Client`](super::websocket::Role).

use base64::Engine;

use super::frame::{encode_header, Decoded, Fin, OpCode, MAX_HEADER};
use super::handshake::accept_key;
use super::mask::unmask;

/// Why the server's answer to our upgrade request is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    /// Not an HTTP response, or over 8 KiB.
    Malformed,
    /// A status other than 101 (the status is kept).
    Status(u16),
    /// 101 without the `Sec-WebSocket-Accept` our key calls for.
    BadAccept,
}

/// A small xorshift generator for keys and masks.
///
/// RFC 6455 §5.3 asks for masking keys an intermediary cannot predict; this
/// generator is seeded from the OS (`getrandom`) once per process, which is
/// what a load generator and a terminal client need, not a CSPRNG per frame.
#[derive(Debug, Clone)]
pub struct MaskRng(u64);

impl MaskRng {
    /// Seeded from the operating system.
    pub fn from_os() -> MaskRng {
        let mut seed = [0u8; 8];
        // SAFETY: `seed` is a valid, writable 8-byte buffer for the duration of the call.
        let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        let mut s = u64::from_ne_bytes(seed);
        if n != 8 || s == 0 {
            s = std::process::id() as u64 ^ 0x9E37_79B9_7F4A_7C15;
        }
        MaskRng(s)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A fresh masking key.
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_ne_bytes()
    }

    /// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64 (24 characters).
    pub fn key(&mut self) -> [u8; 24] {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&self.next_u64().to_ne_bytes());
        raw[8..].copy_from_slice(&self.next_u64().to_ne_bytes());
        let mut out = [0u8; 24];
        base64::engine::general_purpose::STANDARD
            .encode_slice(raw, &mut out)
            .expect("bug: 16 bytes are 24 base64 bytes");
        out
    }
}

/// The opening request for `path` (path and query) on `host`.
pub fn request(host: &str, path: &str, key: &[u8; 24]) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        std::str::from_utf8(key).expect("bug: base64 is ASCII")
    )
    .into_bytes()
}

/// Checks the server's answer; `Done(head_len)` once a valid 101 is complete.
pub fn check_response(buf: &[u8], key: &[u8; 24]) -> Result<Decoded<usize>, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < 8192 => return Ok(Decoded::NeedMore),
        _ => return Err(ClientError::Malformed),
    };
    match resp.code {
        Some(101) => {}
        Some(code) => return Err(ClientError::Status(code)),
        None => return Err(ClientError::Malformed),
    }
    let want = accept_key(key);
    let ok = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("sec-websocket-accept") && h.value.trim_ascii() == want
    });
    if ok {
        Ok(Decoded::Done(len))
    } else {
        Err(ClientError::BadAccept)
    }
}

/// Appends one masked frame (§5.3: every client frame is masked) to `out`.
pub fn encode_masked(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], key: [u8; 4]) {
    let mut header = [0u8; MAX_HEADER];
    let n = encode_header(
        &mut header,
        Fin::Final,
        opcode,
        payload.len() as u64,
        Some(key),
    );
    out.extend_from_slice(&header[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], key, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::handshake::{self, check_upgrade, switching_protocols};
    use crate::protocol::websocket::{Event, Role, WebSocket};

    #[test]
    fn client_request_passes_server_checks_and_answer_passes_client_check() {
        let mut rng = MaskRng(42);
        let key = rng.key();
        let req = request("127.0.0.1:1", "/echo", &key);
        let Ok(Decoded::Done((parsed, _))) = handshake::parse(&req) else {
            panic!()
        };
        let accept = check_upgrade(&parsed).unwrap();
        let resp = switching_protocols(&accept, None);
        assert_eq!(check_response(&resp, &key), Ok(Decoded::Done(resp.len())));
        assert_eq!(check_response(&resp[..10], &key), Ok(Decoded::NeedMore));
        let other = rng.key();
        assert_eq!(check_response(&resp, &other), Err(ClientError::BadAccept));
        assert_eq!(
            check_response(b"HTTP/1.1 503 Busy\r\n\r\n", &key),
            Err(ClientError::Status(503))
        );
    }

    #[test]
    fn masked_frames_decode_on_the_server_side() {
        let mut rng = MaskRng::from_os();
        let mut wire = Vec::new();
        encode_masked(
            &mut wire,
            OpCode::Text,
            "hello wörld".as_bytes(),
            rng.mask(),
        );
        encode_masked(&mut wire, OpCode::Binary, &[1u8; 70_000], rng.mask());
        let mut ws = WebSocket::new(Role::Server, 1 << 20);
        let (n, ev) = ws.read(&mut wire).unwrap();
        assert_eq!(ev, Some(Event::Text("hello wörld")));
        let (_, ev) = ws.read(&mut wire[n..]).unwrap();
        assert!(
            matches!(ev, Some(Event::Binary(b)) if b.len() == 70_000 && b.iter().all(|&x| x == 1))
        );
    }
}
