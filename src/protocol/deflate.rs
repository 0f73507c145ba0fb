//! permessage-deflate (RFC 7692): negotiation and the per-message codec, no I/O.
//!
//! Owns parsing the client's `Sec-WebSocket-Extensions` offers and choosing our answer (§7.1),
//! and the RFC 7692 framing of one message: compress with a sync flush and strip the
//! `00 00 ff ff` tail (§7.2.1), append it again and inflate under a size limit (§7.2.2). DEFLATE
//! itself is `flate2` (zlib-rs backend). Which frames carry RSV1 is `websocket.rs`'s; which
//! recipient gets a compressed frame is the reactor's.
//!
//! # Stateless between messages
//!
//! Wisp always answers `server_no_context_takeover` and `client_no_context_takeover`. §7.1.1.1:
//! "A server MAY include the "server_no_context_takeover" extension parameter in an extension
//! negotiation response even if the extension negotiation offer being accepted by the extension
//! negotiation response didn't include the "server_no_context_takeover" extension parameter."
//! §7.1.1.2: "A server MAY include the "client_no_context_takeover" extension parameter in an
//! extension negotiation response." So every message in either direction is a DEFLATE stream of its
//! own: one [`Deflater`] and one [`Inflater`], reset per message, serve every connection, and a
//! connection keeps no LZ77 window between messages (0 bytes per idle connection, instead of the
//! ~32 KiB inflate window plus ~256 KiB deflate state of context takeover). A compressed broadcast
//! is then the same bytes for every recipient, so it is compressed once.
//!
//! `server_max_window_bits=N` in an offer is accepted by answering the same `N` (§7.1.2.1); since
//! one compressed frame is shared by recipients with different limits, such a connection is only
//! sent compressed messages of at most [`SMALL_WINDOW`] bytes, whose back-references cannot reach
//! further than the smallest window there is (2^8). `client_max_window_bits` is never answered
//! (§7.1.2.2 allows it only when offered, and without context takeover it saves us nothing).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::close::ProtocolError;
use super::frame::{encode_header, Fin, OpCode, MAX_HEADER, RSV1};

/// The extension's name (§7).
pub const EXTENSION: &str = "permessage-deflate";

/// §7.2.1: the tail a sync flush ends with, removed by the sender and appended by the receiver.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Largest message sent compressed to a connection that limited our window
/// (`server_max_window_bits`): 2^8, the smallest window any offer may ask for (§7.1.2.1).
pub const SMALL_WINDOW: usize = 1 << 8;

/// What was agreed with one client; the rest (no context takeover either way) is always so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// `server_max_window_bits` from the accepted offer, answered as is.
    pub server_max_window_bits: Option<u8>,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` value of our answer.
    pub fn response(&self) -> String {
        let mut out =
            format!("{EXTENSION}; server_no_context_takeover; client_no_context_takeover");
        if let Some(bits) = self.server_max_window_bits {
            out.push_str(&format!("; server_max_window_bits={bits}"));
        }
        out
    }

    /// Whether our compressed messages must fit [`SMALL_WINDOW`] for this client.
    pub fn small_window(&self) -> bool {
        self.server_max_window_bits.is_some_and(|b| b < 15)
    }
}

/// Chooses the first `permessage-deflate` offer we can accept among the values of every
/// `Sec-WebSocket-Extensions` line of a request (RFC 6455 §9.1: one or more comma-separated
/// offers, each `name *(";" param ["=" token | quoted-string])`). An offer with an unknown,
/// repeated or malformed parameter is declined (§7.1: "a server MUST decline an extension
/// negotiation offer" it cannot accept), and the next one is considered; a line that does not parse
/// at all declines the rest of that line. `None`: no compression on this connection.
pub fn negotiate<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Option<Agreement> {
    for line in lines {
        let mut p = Parser { s: line, at: 0 };
        while let Some(offer) = p.offer() {
            if let Some(a) = offer {
                return Some(a);
            }
        }
    }
    None
}

/// A cursor over one header value.
struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self
            .s
            .get(self.at)
            .is_some_and(|&b| b == b' ' || b == b'\t')
        {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.s.get(self.at) == Some(&c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// An RFC 7230 token.
    fn token(&mut self) -> Option<&[u8]> {
        self.skip_ws();
        let start = self.at;
        while self
            .s
            .get(self.at)
            .is_some_and(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            self.at += 1;
        }
        (self.at > start).then(|| &self.s[start..self.at])
    }

    /// A token or a quoted-string, unescaped (§7.1: the value is the same either way).
    fn value(&mut self) -> Option<Vec<u8>> {
        self.skip_ws();
        if self.s.get(self.at) != Some(&b'"') {
            return self.token().map(<[u8]>::to_vec);
        }
        self.at += 1;
        let mut out = Vec::new();
        loop {
            match *self.s.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return Some(out);
                }
                b'\\' => {
                    out.push(*self.s.get(self.at + 1)?);
                    self.at += 2;
                }
                b => {
                    out.push(b);
                    self.at += 1;
                }
            }
        }
    }

    /// Skips to just after the next comma outside a quoted string (or to the end).
    fn skip_offer(&mut self) {
        let mut quoted = false;
        while let Some(&b) = self.s.get(self.at) {
            self.at += 1;
            match b {
                b'\\' if quoted => self.at += 1,
                b'"' => quoted = !quoted,
                b',' if !quoted => return,
                _ => {}
            }
        }
    }

    /// The next offer: `None` at the end of the line, `Some(None)` for one we decline.
    fn offer(&mut self) -> Option<Option<Agreement>> {
        self.skip_ws();
        if self.at >= self.s.len() {
            return None;
        }
        let Some(name) = self.token() else {
            // Empty list elements (`a, , b`) are allowed; anything else ends the line.
            if self.eat(b',') {
                return Some(None);
            }
            self.at = self.s.len();
            return Some(None);
        };
        let deflate = name.eq_ignore_ascii_case(EXTENSION.as_bytes());
        let mut params = Params::default();
        // `ok`: the offer parsed (a bad one skips to the next comma); `params.bad`: it parsed, but
        // is not one we may accept.
        let mut ok = true;
        loop {
            if self.eat(b',') || {
                self.skip_ws();
                self.at >= self.s.len()
            } {
                break;
            }
            if !self.eat(b';') {
                ok = false;
                break;
            }
            let Some(key) = self.token().map(<[u8]>::to_ascii_lowercase) else {
                ok = false;
                break;
            };
            let value = if self.eat(b'=') {
                match self.value() {
                    Some(v) => Some(v),
                    None => {
                        ok = false;
                        break;
                    }
                }
            } else {
                None
            };
            if deflate {
                params.add(&key, value.as_deref());
            }
        }
        if !ok {
            self.skip_offer();
        }
        Some((deflate && ok).then(|| params.agreement()).flatten())
    }
}

/// The parameters of one `permessage-deflate` offer (§7.1).
#[derive(Debug, Default)]
struct Params {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    client_max_window_bits: Option<Option<u8>>,
    /// A parameter we do not know, repeated, or with a bad value: decline (§7.1).
    bad: bool,
}

impl Params {
    /// Records one parameter; false if the offer must be declined.
    fn add(&mut self, key: &[u8], value: Option<&[u8]>) -> bool {
        let ok = match key {
            // §7.1.1.1, §7.1.1.2: these "have no value".
            b"server_no_context_takeover" => {
                value.is_none() && !std::mem::replace(&mut self.server_no_context_takeover, true)
            }
            b"client_no_context_takeover" => {
                value.is_none() && !std::mem::replace(&mut self.client_no_context_takeover, true)
            }
            // §7.1.2.1: "this parameter has a value" 8..15.
            b"server_max_window_bits" => match value.and_then(window_bits) {
                Some(b) if self.server_max_window_bits.is_none() => {
                    self.server_max_window_bits = Some(b);
                    true
                }
                _ => false,
            },
            // §7.1.2.2: "may have no value" or 8..15.
            b"client_max_window_bits" if self.client_max_window_bits.is_none() => match value {
                None => {
                    self.client_max_window_bits = Some(None);
                    true
                }
                Some(v) => window_bits(v)
                    .map(|b| self.client_max_window_bits = Some(Some(b)))
                    .is_some(),
            },
            _ => false,
        };
        self.bad |= !ok;
        ok
    }

    fn agreement(&self) -> Option<Agreement> {
        (!self.bad).then_some(Agreement {
            server_max_window_bits: self.server_max_window_bits,
        })
    }
}

/// §7.1.2: "a decimal integer value without leading zeros between 8 to 15, inclusive".
fn window_bits(v: &[u8]) -> Option<u8> {
    match v {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

/// The one compressor: a message in, its RFC 7692 payload out, no state kept between messages.
pub struct Deflater {
    z: Compress,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deflater")
    }
}

impl Deflater {
    /// A compressor at zlib `level`, taken within 2–9. Level 1 is zlib-rs's `deflate_quick`,
    /// which (zlib-rs 0.6.8) panics on some inputs under a sync flush (Autobahn 12.2.x and 12.4.x
    /// found it: bitmap and PDF data of 4 KiB and more); a panic here would end the reactor.
    pub fn new(level: u32) -> Deflater {
        Deflater {
            z: Compress::new(Compression::new(level.clamp(2, 9)), false),
        }
    }

    /// Appends the compressed form of `message` to `out` (§7.2.1: one sync-flushed DEFLATE stream,
    /// its `00 00 ff ff` tail removed) if it is shorter than `message`; otherwise leaves `out` as it
    /// was and returns false: the message is better sent as it is (§6 leaves that choice to us).
    pub fn compress(&mut self, message: &[u8], out: &mut Vec<u8>) -> bool {
        self.z.reset();
        let start = out.len();
        loop {
            out.reserve(message.len() / 2 + 64);
            let used = self.z.total_in() as usize;
            if self
                .z
                .compress_vec(&message[used..], out, FlushCompress::Sync)
                .is_err()
            {
                out.truncate(start);
                return false;
            }
            // Sync flush: done once all input is in and the output did not fill up.
            if self.z.total_in() as usize == message.len() && out.len() < out.capacity() {
                break;
            }
            if out.len() - start > message.len() + TAIL.len() {
                out.truncate(start); // it does not pay: stop early
                return false;
            }
        }
        let end = out.len();
        if end - start < TAIL.len() || out[end - TAIL.len()..] != TAIL {
            out.truncate(start);
            return false;
        }
        out.truncate(end - TAIL.len());
        if out.len() - start >= message.len() {
            out.truncate(start);
            return false;
        }
        true
    }
}

/// Room kept in front of a compressed payload for its header (the longest unmasked one).
const HEADER_ROOM: usize = 10;

impl Deflater {
    /// A whole final, unmasked `opcode` frame with RSV1 (RFC 7692 §6) carrying `payload`
    /// compressed, built in `out` (which it borrows); `None` when compressing does not pay.
    pub fn frame<'o>(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        out: &'o mut Vec<u8>,
    ) -> Option<&'o [u8]> {
        out.clear();
        out.resize(HEADER_ROOM, 0);
        if !self.compress(payload, out) {
            return None;
        }
        let len = out.len() - HEADER_ROOM;
        let mut header = [0u8; MAX_HEADER];
        let n = encode_header(&mut header, Fin::Final, opcode, len as u64, None);
        header[0] |= RSV1;
        out[HEADER_ROOM - n..HEADER_ROOM].copy_from_slice(&header[..n]);
        Some(&out[HEADER_ROOM - n..])
    }
}

/// The one decompressor, reset for every message (the client agreed to no context takeover).
pub struct Inflater {
    z: Decompress,
    out: Vec<u8>,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inflater")
    }
}

impl Default for Inflater {
    fn default() -> Inflater {
        Inflater::new()
    }
}

/// Output capacity kept between messages; a larger one (a big message) is given back.
const INFLATE_KEEP: usize = 64 * 1024;

impl Inflater {
    pub fn new() -> Inflater {
        Inflater {
            z: Decompress::new(false),
            out: Vec::new(),
        }
    }

    /// Inflates one message's payload (§7.2.2: append `00 00 ff ff`, inflate). The output grows
    /// as it is produced and the call fails with [`ProtocolError::MessageTooBig`] as soon as it
    /// passes `max` bytes: a bomb costs at most `max` bytes of memory and the work to produce them.
    /// Data that is not DEFLATE fails with [`ProtocolError::BadDeflate`].
    pub fn inflate(&mut self, payload: &[u8], max: usize) -> Result<&[u8], ProtocolError> {
        self.z.reset(false);
        if self.out.capacity() > INFLATE_KEEP.max(max.min(INFLATE_KEEP)) {
            self.out = Vec::new();
        }
        self.out.clear();
        // A first guess for the output; it doubles from there, never past `max + 1`.
        let mut grow = (payload.len() * 4).clamp(256, 64 * 1024);
        for input in [payload, &TAIL[..]] {
            let base = self.z.total_in();
            loop {
                let used = (self.z.total_in() - base) as usize;
                if self.out.len() == self.out.capacity() {
                    if self.out.len() > max {
                        return Err(ProtocolError::MessageTooBig);
                    }
                    let room = grow.min(max + 1 - self.out.len());
                    self.out.reserve_exact(room);
                    grow = grow.saturating_mul(2);
                }
                let status = self
                    .z
                    .decompress_vec(&input[used..], &mut self.out, FlushDecompress::None)
                    .map_err(|_| ProtocolError::BadDeflate)?;
                if self.out.len() > max {
                    return Err(ProtocolError::MessageTooBig);
                }
                let used = (self.z.total_in() - base) as usize;
                if status == Status::StreamEnd {
                    // A final block (BFINAL): the message ends there (§7.2.3.? allows it).
                    return Ok(&self.out);
                }
                if used == input.len() && self.out.len() < self.out.capacity() {
                    break;
                }
            }
        }
        Ok(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! offers {
        ($($name:ident: [$($line:expr),*] => $want:expr;)*) => {$(
            #[test]
            fn $name() {
                let lines: Vec<&[u8]> = vec![$($line.as_bytes()),*];
                let got = negotiate(lines).map(|a| a.response());
                let want: Option<&str> = $want;
                assert_eq!(got.as_deref(), want);
            }
        )*};
    }

    const PLAIN: Option<&str> =
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover");

    offers! {
        none: [] => None;
        bare: ["permessage-deflate"] => PLAIN;
        case_insensitive_name: ["PerMessage-Deflate"] => PLAIN;
        browser: ["permessage-deflate; client_max_window_bits"] => PLAIN;
        client_bits_value: ["permessage-deflate; client_max_window_bits=10"] => PLAIN;
        both_no_context: ["permessage-deflate; client_no_context_takeover; server_no_context_takeover"] => PLAIN;
        server_bits: ["permessage-deflate; server_max_window_bits=9"] =>
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9");
        server_bits_quoted: ["permessage-deflate; server_max_window_bits=\"12\""] =>
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12");
        server_bits_without_value_declined: ["permessage-deflate; server_max_window_bits"] => None;
        server_bits_out_of_range_declined: ["permessage-deflate; server_max_window_bits=16"] => None;
        server_bits_leading_zero_declined: ["permessage-deflate; server_max_window_bits=09"] => None;
        client_bits_7_declined: ["permessage-deflate; client_max_window_bits=7"] => None;
        no_context_with_value_declined: ["permessage-deflate; client_no_context_takeover=1"] => None;
        duplicate_declined: ["permessage-deflate; server_no_context_takeover; server_no_context_takeover"] => None;
        unknown_param_declined: ["permessage-deflate; foo"] => None;
        other_extension_only: ["x-webkit-deflate-frame"] => None;
        second_offer_taken: ["permessage-deflate; server_max_window_bits=99, permessage-deflate; client_max_window_bits"] => PLAIN;
        after_another_extension: ["foo; bar=\"a,b;c\", permessage-deflate"] => PLAIN;
        autobahn_fallbacks: ["permessage-deflate; client_no_context_takeover; client_max_window_bits; server_no_context_takeover; server_max_window_bits=9, permessage-deflate; client_no_context_takeover; client_max_window_bits; server_no_context_takeover, permessage-deflate; client_no_context_takeover; client_max_window_bits"] =>
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9");
        second_header_line: ["foo", "permessage-deflate"] => PLAIN;
        garbage_line_declined: ["=;;,"] => None;
        malformed_then_good: ["permessage-deflate; =x, permessage-deflate"] => PLAIN;
        unterminated_quote: ["permessage-deflate; server_max_window_bits=\"9"] => None;
        whitespace: ["  permessage-deflate ;\tclient_max_window_bits = 15 "] => PLAIN;
    }

    fn round_trip(msg: &[u8]) -> Vec<u8> {
        let mut d = Deflater::new(6);
        let mut out = Vec::new();
        assert!(d.compress(msg, &mut out), "len {}", msg.len());
        assert!(out.len() < msg.len());
        Inflater::new().inflate(&out, msg.len()).unwrap().to_vec()
    }

    #[test]
    fn compress_then_inflate() {
        for n in [64usize, 200, 1000, 4096, 70_000, 1 << 20] {
            let msg: Vec<u8> = (0..n).map(|i| b"hello wisp "[i % 11]).collect();
            assert_eq!(round_trip(&msg), msg);
        }
    }

    #[test]
    fn a_compressed_frame_has_rsv1_and_the_shortest_header() {
        let msg = "hello ".repeat(100);
        let mut buf = Vec::new();
        let frame = Deflater::new(6)
            .frame(OpCode::Text, msg.as_bytes(), &mut buf)
            .unwrap()
            .to_vec();
        assert_eq!(frame[0], 0x80 | RSV1 | 0x1);
        let payload = &frame[2..];
        assert_eq!(frame[1] as usize, payload.len());
        assert_eq!(
            Inflater::new().inflate(payload, 600).unwrap(),
            msg.as_bytes()
        );
    }

    #[test]
    fn incompressible_is_left_alone() {
        let mut x = 0x12345678u32;
        let msg: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let mut out = b"kept".to_vec();
        assert!(!Deflater::new(6).compress(&msg, &mut out));
        assert_eq!(out, b"kept");
        assert!(!Deflater::new(6).compress(b"hi", &mut out));
    }

    #[test]
    fn rfc_7692_hello_examples() {
        // §7.2.3.1: "Hello" compressed without context takeover.
        let want = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(Inflater::new().inflate(&want, 5).unwrap(), b"Hello");
        // §7.2.3.3: a stored (uncompressed) block.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(Inflater::new().inflate(&stored, 5).unwrap(), b"Hello");
        // §7.2.3.4: a final block (BFINAL) ends the message; what follows is not read.
        let fin = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        assert_eq!(Inflater::new().inflate(&fin, 5).unwrap(), b"Hello");
        // An empty message (§7.2.3.6: a single 0x00 octet).
        assert_eq!(Inflater::new().inflate(&[0x00], 5).unwrap(), b"");
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        // 16 MiB of zeros compresses to ~16 KiB; the limit is 64 KiB.
        let zeros = vec![0u8; 16 << 20];
        let mut bomb = Vec::new();
        assert!(Deflater::new(9).compress(&zeros, &mut bomb));
        let mut inf = Inflater::new();
        assert_eq!(inf.inflate(&bomb, 65536), Err(ProtocolError::MessageTooBig));
        // Stopped at the limit: it held at most a chunk past it.
        assert!(inf.out.capacity() <= 65536 + 1, "{}", inf.out.capacity());
        // The inflater is reusable after a failure.
        let mut ok = Vec::new();
        assert!(Deflater::new(6).compress(&[b'a'; 1000], &mut ok));
        assert_eq!(inf.inflate(&ok, 1000).unwrap(), &[b'a'; 1000][..]);
        assert_eq!(inf.inflate(&ok, 999), Err(ProtocolError::MessageTooBig));
    }

    #[test]
    fn corrupt_data_is_refused() {
        // BTYPE 11 is reserved (RFC 1951 §3.2.3).
        assert_eq!(
            Inflater::new().inflate(&[0xff, 0xff, 0xff], 100),
            Err(ProtocolError::BadDeflate)
        );
        let mut good = Vec::new();
        assert!(Deflater::new(6).compress(&[b'x'; 500], &mut good));
        good[0] ^= 0x06;
        assert!(Inflater::new().inflate(&good, 10_000).is_err());
    }
}
