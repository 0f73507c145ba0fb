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
//! This module knows nothing of sockets, clocks or the chat. What to do about
//! an event (answer a ping, echo a close, fail the connection with the code
//! `CloseCode::from(&err)`) is the caller's decision; the close handshake's
//! timing lives in the reactor.

use super::close::{parse_close_payload, CloseCode, ProtocolError};
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

/// The kind of data message being assembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
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
    kind: Kind,
    /// Unmasked payload so far. INVARIANT: `data.len() <= max_message`.
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
}

impl WebSocket {
    /// A new connection that accepts messages up to `max_message` bytes.
    pub fn new(role: Role, max_message: usize) -> WebSocket {
        WebSocket {
            assembly: None,
            max_message: max_message.min(u32::MAX as usize) as u32,
            role,
        }
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
        if header.opcode.is_control() {
            return self.control_frame(header, buf);
        }
        let kind = match (header.opcode, &self.assembly) {
            (OpCode::Text, None) => Kind::Text,
            (OpCode::Binary, None) => Kind::Binary,
            (OpCode::Continue, Some(a)) => a.kind,
            // §5.4: fragments of one message must not interleave with another.
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(ProtocolError::ExpectedContinuation)
            }
            (OpCode::Continue, None) => return Err(ProtocolError::UnexpectedContinuation),
            _ => unreachable!("bug: control opcodes handled above"),
        };
        let so_far = self.assembly.as_ref().map_or(0, |a| a.data.len()) as u64;
        // Checked before any byte of the payload is kept or any buffer sized by it.
        if so_far + header.payload_len > self.max_message as u64 {
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
                Kind::Text => Event::Text(
                    std::str::from_utf8(payload).map_err(|_| ProtocolError::InvalidUtf8)?,
                ),
                Kind::Binary => Event::Binary(payload),
            };
            return Ok((total, Some(event)));
        }

        // Slow path: copy this frame's payload into the message being assembled.
        let assembly = self.assembly.get_or_insert_with(|| {
            Box::new(Assembly {
                kind,
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
        if a.kind == Kind::Text {
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
            Kind::Text => {
                a.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
                // SAFETY: every byte of `data` went through `a.utf8.feed` in order
                // and `finish` saw no sequence left open, so `data` is UTF-8.
                Event::Text(unsafe { std::str::from_utf8_unchecked(&a.data) })
            }
            Kind::Binary => Event::Binary(&a.data),
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
        for chunk in input.chunks(step.max(1)) {
            pending.extend_from_slice(chunk);
            loop {
                let (n, ev) = ws.read(&mut pending)?;
                if let Some(ev) = ev {
                    events.push(match ev {
                        Event::Text(t) => format!("text:{t}"),
                        Event::Binary(b) => format!("binary:{}", b.len()),
                        Event::Ping(p) => format!("ping:{}", String::from_utf8_lossy(p)),
                        Event::Pong(p) => format!("pong:{}", String::from_utf8_lossy(p)),
                        Event::Close { code, reason } => {
                            format!("close:{}:{reason}", code.map_or(0, CloseCode::as_u16))
                        }
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
