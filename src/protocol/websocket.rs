//! Per-connection RFC 6455 receive state: frames in, messages and control
//! frames out.
//!
//! [`WebSocket::read`] is given the connection's unread bytes and returns at
//! most one [`Event`] per call, borrowing from those bytes whenever a message
//! is one complete frame (the common case: zero copies). Only a message split
//! over several frames, or a frame split over several reads, is assembled in a
//! heap buffer, which is freed as soon as the message is delivered, so an idle
//! connection holds nothing.
//!
//! Under permessage-deflate (RFC 7692) a message whose first frame carries RSV1
//! comes out as [`Event::Compressed`], its payload still compressed; the
//! caller inflates it with the shared [`Inflater`] through [`inflate_message`],
//! so no connection keeps a decompressor.
//!
//! This module knows nothing of sockets, clocks or the chat. What to do about
//! an event (answer a ping, echo a close, fail the connection with the code
//! `CloseCode::from(&err)`) is the caller's decision; the close handshake's
//! timing lives in the reactor.

use super::close::{parse_close_payload, CloseCode, ProtocolError};
use super::deflate::Inflater;
use super::frame::{decode_header, Decoded, Fin, Header, OpCode};
use super::mask::unmask;
use super::utf8::Utf8Validator;

/// Which side of the connection we are: it decides which frames must be masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We accept connections: every frame we receive must be masked (§5.1).
    Server,
    /// We dial out: no frame we receive may be masked (§5.1).
    Client,
}

/// What one call to [`WebSocket::read`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete, valid UTF-8 text message.
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A complete compressed message (RSV1 on its first frame, RFC 7692 §6), payload as received:
    /// hand it to [`inflate_message`]. Only when permessage-deflate was negotiated.
    Compressed(MessageKind, &'a [u8]),
    /// A ping; answer it with a pong carrying the same payload (§5.5.2).
    Ping(&'a [u8]),
    /// A pong (answer to our ping, or unsolicited heartbeat).
    Pong(&'a [u8]),
    /// The peer's close frame, already validated (§5.5.1, §7.4).
    Close {
        /// The status code, if the frame carried one.
        code: Option<CloseCode>,
        /// The reason, UTF-8 checked.
        reason: &'a str,
    },
}

/// The kind of a data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Text,
    Binary,
}

/// A data frame whose payload has not fully arrived yet.
#[derive(Debug, Clone, Copy)]
struct PartialFrame {
    /// Payload bytes still to come.
    remaining: u64,
    mask: Option<[u8; 4]>,
    /// Payload bytes of this frame already received (the masking key's phase).
    offset: usize,
    fin: Fin,
}

/// A message spread over several frames or several reads.
#[derive(Debug)]
struct Assembly {
    kind: MessageKind,
    /// RSV1 was on the first frame: `data` is DEFLATE data, checked for UTF-8 only once inflated.
    compressed: bool,
    /// Unmasked payload so far. INVARIANT: `data.len() <= max_message` (its compressed bound,
    /// [`compressed_limit`], for a compressed message).
    data: Vec<u8>,
    utf8: Utf8Validator,
    /// The data frame currently arriving, if its payload is incomplete.
    frame: Option<PartialFrame>,
    /// The message is complete and was handed out; drop it on the next read.
    delivered: bool,
}

/// The receive side of one WebSocket connection.
#[derive(Debug)]
pub struct WebSocket {
    /// `None` whenever no message is half-received: the idle state owns no heap.
    assembly: Option<Box<Assembly>>,
    /// Largest message accepted, after reassembly (`--max-message-bytes`;
    /// 32 bits keep this struct at two words, and the option caps it at 1 GiB).
    max_message: u32,
    role: Role,
    /// permessage-deflate was negotiated: RSV1 may start a compressed message.
    deflate: bool,
}

/// Most compressed bytes accepted for a message of at most `max` bytes: DEFLATE's own worst case
/// (stored blocks, 5 bytes per block of up to 64 KiB) with room to spare; past it the message could
/// not inflate to `max` or less without being padded with empty blocks, which we do not take.
pub fn compressed_limit(max: usize) -> usize {
    max + max / 64 + 64
}

impl WebSocket {
    /// A new connection that accepts messages up to `max_message` bytes.
    pub fn new(role: Role, max_message: usize) -> WebSocket {
        WebSocket {
            assembly: None,
            max_message: max_message.min(u32::MAX as usize) as u32,
            role,
            deflate: false,
        }
    }

    /// The same, with permessage-deflate negotiated: RSV1 marks a compressed message.
    pub fn with_deflate(mut self) -> WebSocket {
        self.deflate = true;
        self
    }

    /// Largest message accepted (after inflating, for a compressed one).
    pub fn max_message(&self) -> usize {
        self.max_message as usize
    }

    /// Whether a message or a frame is half-received (and so heap is held).
    pub fn is_mid_message(&self) -> bool {
        self.assembly.as_ref().is_some_and(|a| !a.delivered)
    }

    /// Decodes from the start of `buf`, unmasking payloads in place.
    ///
    /// Returns how many bytes of `buf` were consumed (the caller drops them)
    /// and the event they completed, if any. `(0, None)` means `buf` holds no
    /// complete unit of work: keep it and call again with more bytes. An error
    /// means the connection must be failed with `CloseCode::from(&err)`; the
    /// state is then unspecified and `read` must not be called again.
    pub fn read<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> Result<(usize, Option<Event<'a>>), ProtocolError> {
        if self.assembly.as_ref().is_some_and(|a| a.delivered) {
            self.assembly = None;
        }
        // A frame already underway: its next bytes are payload.
        if self.assembly.as_ref().is_some_and(|a| a.frame.is_some()) {
            return self.continue_frame(buf, 0);
        }
        let header = match decode_header(buf)? {
            Decoded::Done(h) => h,
            Decoded::NeedMore => return Ok((0, None)),
        };
        match (self.role, header.mask) {
            (Role::Server, None) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, Some(_)) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        if header.rsv1 {
            // RFC 6455 §5.2: RSV1 "MUST be 0 unless an extension is negotiated".
            if !self.deflate {
                return Err(ProtocolError::ReservedBits);
            }
            // RFC 7692 §6.1: "An endpoint MUST NOT set the "Per-Message Compressed" bit of
            // control frames and non-first fragments of a data message."
            if header.opcode.is_control() || header.opcode == OpCode::Continue {
                return Err(ProtocolError::BadCompressedFrame);
            }
        }
        if header.opcode.is_control() {
            return self.control_frame(header, buf);
        }
        let kind = match (header.opcode, &self.assembly) {
            (OpCode::Text, None) => MessageKind::Text,
            (OpCode::Binary, None) => MessageKind::Binary,
            (OpCode::Continue, Some(a)) => a.kind,
            // §5.4: fragments of one message must not interleave with another.
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(ProtocolError::ExpectedContinuation)
            }
            (OpCode::Continue, None) => return Err(ProtocolError::UnexpectedContinuation),
            _ => unreachable!("bug: control opcodes handled above"),
        };
        let compressed = match &self.assembly {
            Some(a) => a.compressed,
            None => header.rsv1,
        };
        let so_far = self.assembly.as_ref().map_or(0, |a| a.data.len()) as u64;
        let limit = if compressed {
            compressed_limit(self.max_message as usize)
        } else {
            self.max_message as usize
        };
        // Checked before any byte of the payload is kept or any buffer sized by it. A compressed
        // message is checked again, against `max_message`, while it is inflated.
        if so_far + header.payload_len > limit as u64 {
            return Err(ProtocolError::MessageTooBig);
        }
        let len = header.payload_len as usize;
        let total = header.header_len + len;

        // Fast path: an unfragmented message whose frame is all here.
        if self.assembly.is_none() && header.fin == Fin::Final && buf.len() >= total {
            let payload = &mut buf[header.header_len..total];
            if let Some(key) = header.mask {
                unmask(payload, key, 0);
            }
            let event = match kind {
                _ if compressed => Event::Compressed(kind, payload),
                MessageKind::Text => Event::Text(
                    std::str::from_utf8(payload).map_err(|_| ProtocolError::InvalidUtf8)?,
                ),
                MessageKind::Binary => Event::Binary(payload),
            };
            return Ok((total, Some(event)));
        }

        // Slow path: copy this frame's payload into the message being assembled.
        let assembly = self.assembly.get_or_insert_with(|| {
            Box::new(Assembly {
                kind,
                compressed,
                // Sized by the first frame only: a peer announcing a large
                // fragment must then actually send it before we grow further.
                data: Vec::with_capacity(len.min(64 * 1024)),
                utf8: Utf8Validator::new(),
                frame: None,
                delivered: false,
            })
        });
        assembly.frame = Some(PartialFrame {
            remaining: header.payload_len,
            mask: header.mask,
            offset: 0,
            fin: header.fin,
        });
        self.continue_frame(buf, header.header_len)
    }

    /// Takes the payload of the frame underway from `buf[start..]`.
    fn continue_frame<'a>(
        &'a mut self,
        buf: &'a mut [u8],
        start: usize,
    ) -> Result<(usize, Option<Event<'a>>), ProtocolError> {
        let a = self.assembly.as_mut().expect("bug: no message underway");
        let f = a.frame.as_mut().expect("bug: no frame underway");
        let take = (f.remaining.min((buf.len() - start) as u64)) as usize;
        let piece = &mut buf[start..start + take];
        if let Some(key) = f.mask {
            unmask(piece, key, f.offset);
        }
        if a.kind == MessageKind::Text && !a.compressed {
            // Fail on the first invalid byte, even mid-frame (§8.1; Autobahn 6.4.x).
            a.utf8.feed(piece).map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        a.data.extend_from_slice(piece);
        f.offset += take;
        f.remaining -= take as u64;
        let consumed = start + take;
        if f.remaining > 0 {
            return Ok((consumed, None));
        }
        let fin = f.fin;
        a.frame = None;
        if fin == Fin::More {
            return Ok((consumed, None));
        }
        a.delivered = true;
        let event = match a.kind {
            kind if a.compressed => Event::Compressed(kind, &a.data),
            MessageKind::Text => {
                a.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
                // SAFETY: every byte of `data` went through `a.utf8.feed` in order
                // and `finish` saw no sequence left open, so `data` is UTF-8.
                Event::Text(unsafe { std::str::from_utf8_unchecked(&a.data) })
            }
            MessageKind::Binary => Event::Binary(&a.data),
        };
        Ok((consumed, Some(event)))
    }

    /// A ping, pong or close: at most 125 bytes, handled whole (§5.5).
    fn control_frame<'a>(
        &'a mut self,
        header: Header,
        buf: &'a mut [u8],
    ) -> Result<(usize, Option<Event<'a>>), ProtocolError> {
        let total = header.header_len + header.payload_len as usize;
        if buf.len() < total {
            return Ok((0, None));
        }
        let payload = &mut buf[header.header_len..total];
        if let Some(key) = header.mask {
            unmask(payload, key, 0);
        }
        let event = match header.opcode {
            OpCode::Ping => Event::Ping(payload),
            OpCode::Pong => Event::Pong(payload),
            OpCode::Close => {
                let (code, reason) = parse_close_payload(payload)?;
                Event::Close { code, reason }
            }
            _ => unreachable!("bug: not a control opcode"),
        };
        Ok((total, Some(event)))
    }
}

/// Inflates a compressed message ([`Event::Compressed`]) with the shared `inflater`: its text or
/// binary event, borrowing the inflater's output. Fails with 1009 as soon as the output passes
/// `max` bytes, 1007 for data that is not DEFLATE or text that is not UTF-8.
pub fn inflate_message<'a>(
    inflater: &'a mut Inflater,
    kind: MessageKind,
    payload: &[u8],
    max: usize,
) -> Result<Event<'a>, ProtocolError> {
    let data = inflater.inflate(payload, max)?;
    Ok(match kind {
        MessageKind::Text => {
            Event::Text(std::str::from_utf8(data).map_err(|_| ProtocolError::InvalidUtf8)?)
        }
        MessageKind::Binary => Event::Binary(data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{encode_header, MAX_HEADER};

    const KEY: [u8; 4] = [0xA1, 0xB2, 0xC3, 0xD4];

    /// A masked client frame with explicit first byte (FIN, RSV, opcode bits).
    fn raw(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = [0u8; MAX_HEADER];
        let n = encode_header(
            &mut h,
            Fin::Final,
            OpCode::Binary,
            payload.len() as u64,
            Some(KEY),
        );
        h[0] = b0;
        let mut out = h[..n].to_vec();
        let mut p = payload.to_vec();
        unmask(&mut p, KEY, 0);
        out.extend_from_slice(&p);
        out
    }

    fn frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        raw(if fin { 0x80 } else { 0 } | op, payload)
    }

    /// Feeds `input` in chunks of `step` bytes the way the reactor does (keep
    /// unconsumed bytes, append the next read) and collects events as owned values.
    fn run(ws: &mut WebSocket, input: &[u8], step: usize) -> Result<Vec<String>, ProtocolError> {
        let mut pending: Vec<u8> = Vec::new();
        let mut events = Vec::new();
        let mut inflater = Inflater::new();
        let max = ws.max_message();
        for chunk in input.chunks(step.max(1)) {
            pending.extend_from_slice(chunk);
            loop {
                let (n, ev) = ws.read(&mut pending)?;
                if let Some(Event::Compressed(kind, payload)) = ev {
                    events.push(match inflate_message(&mut inflater, kind, payload, max)? {
                        Event::Text(t) => format!("ztext:{t}"),
                        Event::Binary(b) => format!("zbinary:{}", b.len()),
                        _ => unreachable!(),
                    });
                } else if let Some(ev) = ev {
                    events.push(match ev {
                        Event::Text(t) => format!("text:{t}"),
                        Event::Binary(b) => format!("binary:{}", b.len()),
                        Event::Ping(p) => format!("ping:{}", String::from_utf8_lossy(p)),
                        Event::Pong(p) => format!("pong:{}", String::from_utf8_lossy(p)),
                        Event::Close { code, reason } => {
                            format!("close:{}:{reason}", code.map_or(0, CloseCode::as_u16))
                        }
                        Event::Compressed(..) => unreachable!(),
                    });
                }
                pending.drain(..n);
                if n == 0 {
                    break;
                }
            }
        }
        Ok(events)
    }

    fn server() -> WebSocket {
        WebSocket::new(Role::Server, 1 << 20)
    }

    fn run_all_steps(input: &[u8]) -> Result<Vec<String>, ProtocolError> {
        let whole = run(&mut server(), input, input.len());
        for step in [1, 2, 3, 7, 64] {
            assert_eq!(run(&mut server(), input, step), whole, "step {step}");
        }
        whole
    }

    /// The same, on a connection that negotiated permessage-deflate, limited to `max` bytes.
    fn run_deflate(input: &[u8], max: usize) -> Result<Vec<String>, ProtocolError> {
        let ws = || WebSocket::new(Role::Server, max).with_deflate();
        let whole = run(&mut ws(), input, input.len());
        for step in [1, 3, 64] {
            assert_eq!(run(&mut ws(), input, step), whole, "step {step}");
        }
        whole
    }

    /// `text` compressed as one RFC 7692 message (no context takeover).
    fn deflated(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        assert!(crate::protocol::deflate::Deflater::new(6).compress(text, &mut out));
        out
    }

    #[test]
    fn compressed_single_frame_and_fragments_with_a_ping_between() {
        let z = deflated("héllo ".repeat(50).as_bytes());
        let mut input = raw(0xC1, &z);
        // RFC 7692 §6.1: RSV1 on the first fragment only; a ping may come between fragments.
        let (a, b) = z.split_at(z.len() / 2);
        input.extend(raw(0x40 | 0x1, a));
        input.extend(frame(true, 9, b"hb"));
        input.extend(raw(0x80, b));
        input.extend(raw(0xC2, &deflated(&[7u8; 5000])));
        input.extend(frame(true, 1, b"plain"));
        let text = format!("ztext:{}", "héllo ".repeat(50));
        assert_eq!(
            run_deflate(&input, 1 << 20).unwrap(),
            [
                &text[..],
                "ping:hb",
                &text[..],
                "zbinary:5000",
                "text:plain"
            ]
        );
    }

    #[test]
    fn deflate_bomb_is_1009_while_inflating() {
        // 1 MiB of zeros compresses to about 1 KiB: well under the compressed bound of a
        // 64 KiB limit, so only the inflating can stop it.
        let input = raw(0xC2, &deflated(&vec![0u8; 1 << 20]));
        let err = run_deflate(&input, 65536).unwrap_err();
        assert_eq!(
            (err, CloseCode::from(&err).as_u16()),
            (ProtocolError::MessageTooBig, 1009)
        );
    }

    #[test]
    fn compressed_payload_over_its_bound_is_1009_from_the_header() {
        let mut ws = WebSocket::new(Role::Server, 1000).with_deflate();
        let mut header = raw(0xC2, &[0; 2000]);
        header.truncate(8);
        assert_eq!(ws.read(&mut header), Err(ProtocolError::MessageTooBig));
    }

    #[test]
    fn deflate_refusals() {
        let cases: [(Vec<u8>, ProtocolError, u16); 5] = [
            (
                raw(0xC1, &[0xff, 0xff, 0xff]),
                ProtocolError::BadDeflate,
                1007,
            ),
            // Inflates fine, but to text that is not UTF-8.
            (
                raw(0xC1, &deflated(&[0xc0; 300])),
                ProtocolError::InvalidUtf8,
                1007,
            ),
            // RFC 7692 §6.1: no RSV1 on control frames or continuations.
            (raw(0xC9, b""), ProtocolError::BadCompressedFrame, 1002),
            (
                [raw(0x41, &deflated(&[b'a'; 300])[..3]), raw(0xC0, b"x")].concat(),
                ProtocolError::BadCompressedFrame,
                1002,
            ),
            // RSV2 stays reserved.
            (raw(0xA1, b"x"), ProtocolError::ReservedBits, 1002),
        ];
        for (input, err, code) in cases {
            let got = run_deflate(&input, 1 << 20).unwrap_err();
            assert_eq!(
                (got, CloseCode::from(&got).as_u16()),
                (err, code),
                "{input:x?}"
            );
        }
    }

    #[test]
    fn single_frame_text_and_binary() {
        let mut input = frame(true, 1, "héllo".as_bytes());
        input.extend(frame(true, 2, &[0u8; 300]));
        input.extend(frame(true, 1, b""));
        assert_eq!(
            run_all_steps(&input).unwrap(),
            ["text:héllo", "binary:300", "text:"]
        );
    }

    #[test]
    fn fragmented_message_with_interleaved_ping() {
        // §5.4: control frames MAY be injected in the middle of a fragmented message.
        let mut input = frame(false, 1, b"Hel");
        input.extend(frame(true, 9, b"hb"));
        input.extend(frame(false, 0, b"lo "));
        input.extend(frame(true, 0xA, b""));
        input.extend(frame(true, 0, "wörld".as_bytes()));
        assert_eq!(
            run_all_steps(&input).unwrap(),
            ["ping:hb", "pong:", "text:Hello wörld"]
        );
    }

    #[test]
    fn utf8_split_across_fragments_is_fine() {
        let bytes = "𝄞".as_bytes();
        let mut input = frame(false, 1, &bytes[..1]);
        input.extend(frame(false, 0, &bytes[1..3]));
        input.extend(frame(true, 0, &bytes[3..]));
        assert_eq!(run_all_steps(&input).unwrap(), ["text:𝄞"]);
    }

    #[test]
    fn large_message_sizes_round_trip() {
        for len in [125usize, 126, 65535, 65536, 1 << 20] {
            let input = frame(true, 2, &vec![7u8; len]);
            assert_eq!(
                run(&mut server(), &input, 4096).unwrap(),
                [format!("binary:{len}")]
            );
        }
    }

    #[test]
    fn close_frames() {
        assert_eq!(run_all_steps(&frame(true, 8, b"")).unwrap(), ["close:0:"]);
        assert_eq!(
            run_all_steps(&frame(true, 8, b"\x03\xe8bye")).unwrap(),
            ["close:1000:bye"]
        );
        assert_eq!(
            run_all_steps(&frame(true, 8, b"\x0f\xa0")).unwrap(),
            ["close:4000:"]
        );
    }

    macro_rules! refused {
        ($($name:ident: $input:expr => $err:expr, $code:expr;)*) => {$(
            #[test]
            fn $name() {
                let err = run_all_steps(&$input).unwrap_err();
                assert_eq!(err, $err);
                assert_eq!(CloseCode::from(&err).as_u16(), $code);
            }
        )*};
    }

    refused! {
        unmasked_client_frame_1002: *b"\x81\x02hi" => ProtocolError::UnmaskedFrame, 1002;
        rsv1_1002: raw(0xC1, b"x") => ProtocolError::ReservedBits, 1002;
        rsv2_1002: raw(0xA1, b"x") => ProtocolError::ReservedBits, 1002;
        rsv3_1002: raw(0x91, b"x") => ProtocolError::ReservedBits, 1002;
        reserved_data_opcode_1002: raw(0x83, b"") => ProtocolError::ReservedOpcode, 1002;
        reserved_control_opcode_1002: raw(0x8B, b"") => ProtocolError::ReservedOpcode, 1002;
        fragmented_ping_1002: raw(0x09, b"x") => ProtocolError::FragmentedControl, 1002;
        ping_over_125_1002: frame(true, 9, &[0; 126]) => ProtocolError::ControlTooLong, 1002;
        close_over_125_1002: frame(true, 8, &[3; 126]) => ProtocolError::ControlTooLong, 1002;
        continuation_without_start_1002: frame(true, 0, b"x") => ProtocolError::UnexpectedContinuation, 1002;
        new_text_inside_fragmented_1002: [frame(false, 1, b"a"), frame(true, 1, b"b")].concat() => ProtocolError::ExpectedContinuation, 1002;
        close_one_byte_payload_1002: frame(true, 8, b"\x03") => ProtocolError::BadCloseCode, 1002;
        close_code_1005_1002: frame(true, 8, b"\x03\xed") => ProtocolError::BadCloseCode, 1002;
        close_code_999_1002: frame(true, 8, b"\x03\xe7") => ProtocolError::BadCloseCode, 1002;
        close_code_5000_1002: frame(true, 8, b"\x13\x88") => ProtocolError::BadCloseCode, 1002;
        close_reason_bad_utf8_1007: frame(true, 8, b"\x03\xe8\xff\xfe") => ProtocolError::BadCloseReason, 1007;
        text_bad_utf8_1007: frame(true, 1, b"ok\xc0\xaf") => ProtocolError::InvalidUtf8, 1007;
        text_truncated_utf8_at_end_1007: frame(true, 1, b"ok\xf0\x9d") => ProtocolError::InvalidUtf8, 1007;
        fragmented_bad_utf8_1007: [frame(false, 1, b"ok"), frame(true, 0, b"\xed\xa0\x80")].concat() => ProtocolError::InvalidUtf8, 1007;
        oversize_single_frame_1009: frame(true, 2, &vec![0; (1 << 20) + 1]) => ProtocolError::MessageTooBig, 1009;
        oversize_after_reassembly_1009: [frame(false, 2, &vec![0; 1 << 19]), frame(true, 0, &vec![0; (1 << 19) + 1])].concat() => ProtocolError::MessageTooBig, 1009;
    }

    #[test]
    fn bad_utf8_fails_before_the_frame_ends() {
        // The header and the first bytes of a 1000-byte text frame; the invalid
        // sequence is in this first piece, the rest has not arrived.
        let input = frame(
            true,
            1,
            &[b"abc\xf4\x90\x80\x80".as_slice(), &[b'x'; 992]].concat(),
        );
        let mut ws = server();
        let mut first = input[..20].to_vec();
        assert_eq!(ws.read(&mut first), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn oversize_refused_from_the_header_alone() {
        let mut ws = WebSocket::new(Role::Server, 1000);
        let mut header = frame(true, 2, &[0; 1001]);
        header.truncate(8);
        assert_eq!(ws.read(&mut header), Err(ProtocolError::MessageTooBig));
    }

    #[test]
    fn client_role_refuses_masked_frames() {
        let mut ws = WebSocket::new(Role::Client, 1000);
        assert_eq!(
            ws.read(&mut frame(true, 1, b"x")),
            Err(ProtocolError::MaskedFrame)
        );
        let mut ok = b"\x81\x02hi".to_vec();
        assert_eq!(ws.read(&mut ok), Ok((4, Some(Event::Text("hi")))));
    }

    #[test]
    fn idle_after_message_holds_no_heap() {
        let mut ws = server();
        let input = [frame(false, 1, b"a"), frame(true, 0, b"b")].concat();
        run(&mut ws, &input, 3).unwrap();
        assert!(!ws.is_mid_message());
        let mut empty = [];
        assert_eq!(ws.read(&mut empty), Ok((0, None)));
        assert!(ws.assembly.is_none());
    }
}
