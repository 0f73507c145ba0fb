//! Frame headers (RFC 6455 §5.2), decoded straight out of the receive buffer
//! and encoded into a small stack array.
//!
//! This module owns the bit layout only. It never allocates and never copies a
//! payload: a decoded [`Header`] says where the payload starts and how long it
//! is, and the caller borrows it from its own buffer. Message assembly,
//! control-frame rules that need state, and UTF-8 live in `websocket.rs`.

use std::rc::Rc;

use super::close::ProtocolError;

/// The largest header: 2 bytes, 8 bytes of extended length, 4 bytes of mask.
pub const MAX_HEADER: usize = 14;

/// RSV1 in the first header byte: "Per-Message Compressed" under permessage-deflate (RFC 7692 §6).
pub const RSV1: u8 = 0x40;

/// A frame opcode (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: the next fragment of a message.
    Continue,
    /// 0x1: the first frame of a text message.
    Text,
    /// 0x2: the first frame of a binary message.
    Binary,
    /// 0x8: the close handshake.
    Close,
    /// 0x9: a heartbeat request.
    Ping,
    /// 0xA: a heartbeat answer.
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Result<OpCode, ProtocolError> {
        Ok(match bits {
            0x0 => OpCode::Continue,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            // §5.2: "%x3-7 are reserved for further non-control frames",
            // "%xB-F are reserved for further control frames".
            _ => return Err(ProtocolError::ReservedOpcode),
        })
    }

    fn bits(self) -> u8 {
        match self {
            OpCode::Continue => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Close, Ping and Pong (§5.5).
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Whether a frame ends its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fin {
    /// FIN set: the last (or only) frame of a message.
    Final,
    /// FIN clear: more fragments follow.
    More,
}

/// A decoded frame header. The payload is `buf[header_len..header_len + payload_len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: Fin,
    /// RSV1: whether the frame is marked compressed (RFC 7692 §6). What it may be set on is the
    /// caller's rule (it depends on what was negotiated).
    pub rsv1: bool,
    pub opcode: OpCode,
    /// The masking key, present on every client-to-server frame.
    pub mask: Option<[u8; 4]>,
    /// Payload length as sent. Not yet checked against any limit: the caller
    /// must do that before trusting it for an allocation.
    pub payload_len: u64,
    /// Bytes taken by the header itself (2 to 14).
    pub header_len: usize,
}

/// "Need more bytes" is an outcome, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<T> {
    /// A complete value.
    Done(T),
    /// The buffer ends before the value does.
    NeedMore,
}

/// Decodes the header at the start of `buf`.
///
/// Checks only what the header alone can tell: RSV2 and RSV3 (no extension
/// defines them; RSV1 is reported for the caller to judge), reserved opcodes, the top bit of a 64-bit length, and the
/// control-frame rules of §5.5 (not fragmented, at most 125 bytes).
pub fn decode_header(buf: &[u8]) -> Result<Decoded<Header>, ProtocolError> {
    let [b0, b1, ..] = *buf else {
        return Ok(Decoded::NeedMore);
    };
    // §5.2: "RSV1, RSV2, RSV3: 1 bit each. MUST be 0 unless an extension is
    // negotiated that defines meanings for non-zero values." Only permessage-deflate's RSV1
    // can be negotiated; whether it was is for the caller.
    if b0 & 0x30 != 0 {
        return Err(ProtocolError::ReservedBits);
    }
    let opcode = OpCode::from_bits(b0 & 0x0F)?;
    let fin = if b0 & 0x80 != 0 {
        Fin::Final
    } else {
        Fin::More
    };
    if opcode.is_control() {
        // §5.5: "All control frames MUST have a payload length of 125 bytes or
        // less and MUST NOT be fragmented."
        if fin == Fin::More {
            return Err(ProtocolError::FragmentedControl);
        }
        if b1 & 0x7F > 125 {
            return Err(ProtocolError::ControlTooLong);
        }
    }
    let masked = b1 & 0x80 != 0;
    let (payload_len, len_bytes) = match b1 & 0x7F {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(Decoded::NeedMore);
            };
            (u16::from_be_bytes([b[0], b[1]]) as u64, 2)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(Decoded::NeedMore);
            };
            let len = u64::from_be_bytes(b.try_into().expect("bug: 8-byte slice"));
            // §5.2: "the most significant bit MUST be 0".
            if len >> 63 != 0 {
                return Err(ProtocolError::LengthOverflow);
            }
            (len, 8)
        }
        n => (n as u64, 0),
    };
    let mut header_len = 2 + len_bytes;
    let mask = if masked {
        let Some(k) = buf.get(header_len..header_len + 4) else {
            return Ok(Decoded::NeedMore);
        };
        header_len += 4;
        Some([k[0], k[1], k[2], k[3]])
    } else {
        None
    };
    Ok(Decoded::Done(Header {
        fin,
        rsv1: b0 & RSV1 != 0,
        opcode,
        mask,
        payload_len,
        header_len,
    }))
}

/// Encodes a header into `out`; returns its length. Uses the shortest length
/// form, as §5.2 requires ("the minimal number of bytes MUST be used").
pub fn encode_header(
    out: &mut [u8; MAX_HEADER],
    fin: Fin,
    opcode: OpCode,
    len: u64,
    mask: Option<[u8; 4]>,
) -> usize {
    out[0] = opcode.bits() | if fin == Fin::Final { 0x80 } else { 0 };
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if len < 126 {
        out[1] = mask_bit | len as u8;
        2
    } else if len <= u16::MAX as u64 {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&len.to_be_bytes());
        10
    };
    if let Some(k) = mask {
        out[n..n + 4].copy_from_slice(&k);
        n += 4;
    }
    n
}

/// A complete unmasked (server-to-client) frame in one allocation: header and payload.
pub fn encode_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut header = [0u8; MAX_HEADER];
    let n = encode_header(&mut header, Fin::Final, opcode, payload.len() as u64, None);
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
    out
}

/// Room kept in front of a payload written in place: the longest unmasked header.
const UNMASKED_HEADER_ROOM: usize = 10;

/// Frames larger than this are not worth keeping the buffer's capacity for.
const FRAME_BUF_KEEP: usize = 64 * 1024;

/// A reusable buffer for unmasked (server) frames whose payload is written in
/// place: the writer appends the payload after room for the longest header,
/// and the header is put just in front of it once the length is known. An
/// event is thus serialised once, straight into its frame.
#[derive(Debug, Default)]
pub struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    /// A final, unmasked `opcode` frame whose payload is what `write` appends
    /// to the vector it is given (which `write` must only append to). The
    /// frame borrows this buffer until the next call.
    pub fn build(&mut self, opcode: OpCode, write: impl FnOnce(&mut Vec<u8>)) -> &[u8] {
        if self.buf.capacity() > FRAME_BUF_KEEP {
            self.buf = Vec::new();
        }
        self.buf.clear();
        self.buf.resize(UNMASKED_HEADER_ROOM, 0);
        write(&mut self.buf);
        assert!(
            self.buf.len() >= UNMASKED_HEADER_ROOM,
            "bug: a frame writer removed the header room"
        );
        let len = self.buf.len() - UNMASKED_HEADER_ROOM;
        let mut header = [0u8; MAX_HEADER];
        let n = encode_header(&mut header, Fin::Final, opcode, len as u64, None);
        let start = UNMASKED_HEADER_ROOM - n;
        self.buf[start..UNMASKED_HEADER_ROOM].copy_from_slice(&header[..n]);
        &self.buf[start..]
    }
}

/// One complete, unmasked frame encoded once and shared by reference: the same bytes go into every
/// recipient's output queue (and, for chat events, into the history), each holding a reference.
#[derive(Clone, Debug)]
pub struct SharedFrame {
    /// The frame is `bytes[..len]`; the buffer may be longer (a pooled size class).
    bytes: Rc<[u8]>,
    len: u32,
}

impl PartialEq for SharedFrame {
    fn eq(&self, other: &SharedFrame) -> bool {
        self.frame() == other.frame()
    }
}

impl Eq for SharedFrame {}

impl SharedFrame {
    /// The frame held in `bytes[..len]`.
    ///
    /// # Panics
    /// If `len` is past the buffer or over 4 GiB.
    pub fn new(bytes: Rc<[u8]>, len: usize) -> SharedFrame {
        assert!(len <= bytes.len(), "bug: frame longer than its buffer");
        let len = u32::try_from(len).expect("bug: a shared frame over 4 GiB");
        SharedFrame { bytes, len }
    }

    /// The whole frame, for a write.
    pub fn frame(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The payload of a text frame.
    ///
    /// # Panics
    /// If the frame is not an unmasked frame whose payload is UTF-8.
    pub fn text(&self) -> &str {
        std::str::from_utf8(unmasked_payload(self.frame())).expect("bug: shared frame is not UTF-8")
    }

    /// Bytes of [`SharedFrame::text`], without checking them again.
    pub fn text_len(&self) -> usize {
        unmasked_payload(self.frame()).len()
    }

    /// Bytes of the buffer holding the frame (a pooled one may be longer than the frame): what
    /// keeping it costs.
    pub fn buffer_len(&self) -> usize {
        self.bytes.len()
    }

    /// The buffer, to reuse once nothing else refers to it.
    pub fn into_buffer(self) -> Rc<[u8]> {
        self.bytes
    }
}

/// The payload of one complete, unmasked frame that this side encoded (a
/// frame from [`encode_frame`] or [`FrameBuf::build`]).
///
/// # Panics
/// If `frame` is not such a frame.
pub fn unmasked_payload(frame: &[u8]) -> &[u8] {
    match decode_header(frame) {
        Ok(Decoded::Done(h))
            if h.mask.is_none() && frame.len() as u64 == h.header_len as u64 + h.payload_len =>
        {
            &frame[h.header_len..]
        }
        _ => panic!("bug: not one complete unmasked frame"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! header_cases {
        ($($name:ident: $bytes:expr => $want:expr;)*) => {$(
            #[test]
            fn $name() {
                assert_eq!(decode_header($bytes), $want);
            }
        )*};
    }

    header_cases! {
        empty_needs_more: &[] => Ok(Decoded::NeedMore);
        one_byte_needs_more: &[0x81] => Ok(Decoded::NeedMore);
        rsv1_reported: &[0xC1, 0x00] => Ok(Decoded::Done(Header {
            fin: Fin::Final, rsv1: true, opcode: OpCode::Text, mask: None, payload_len: 0, header_len: 2,
        }));
        rsv2_refused: &[0xA1, 0x80] => Err(ProtocolError::ReservedBits);
        rsv3_refused: &[0x91, 0x80] => Err(ProtocolError::ReservedBits);
        opcode_3_refused: &[0x83, 0x80] => Err(ProtocolError::ReservedOpcode);
        opcode_7_refused: &[0x87, 0x80] => Err(ProtocolError::ReservedOpcode);
        opcode_b_refused: &[0x8B, 0x80] => Err(ProtocolError::ReservedOpcode);
        opcode_f_refused: &[0x8F, 0x80] => Err(ProtocolError::ReservedOpcode);
        fragmented_ping_refused: &[0x09, 0x80] => Err(ProtocolError::FragmentedControl);
        fragmented_close_refused: &[0x08, 0x80] => Err(ProtocolError::FragmentedControl);
        ping_126_refused: &[0x89, 0xFE, 0x00, 0x7E] => Err(ProtocolError::ControlTooLong);
        top_bit_length_refused: &[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0] => Err(ProtocolError::LengthOverflow);
        len16_needs_more: &[0x82, 0xFE, 0x01] => Ok(Decoded::NeedMore);
        len64_needs_more: &[0x82, 0xFF, 0, 0, 0, 0] => Ok(Decoded::NeedMore);
        mask_needs_more: &[0x81, 0x85, 1, 2, 3] => Ok(Decoded::NeedMore);
        rfc_masked_hello: &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f] => Ok(Decoded::Done(Header {
            fin: Fin::Final, rsv1: false, opcode: OpCode::Text, mask: Some([0x37, 0xfa, 0x21, 0x3d]), payload_len: 5, header_len: 6,
        }));
        rfc_fragment: &[0x01, 0x03, b'H'] => Ok(Decoded::Done(Header {
            fin: Fin::More, rsv1: false, opcode: OpCode::Text, mask: None, payload_len: 3, header_len: 2,
        }));
        len16: &[0x82, 0x7E, 0x01, 0x00] => Ok(Decoded::Done(Header {
            fin: Fin::Final, rsv1: false, opcode: OpCode::Binary, mask: None, payload_len: 256, header_len: 4,
        }));
        len64: &[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0] => Ok(Decoded::Done(Header {
            fin: Fin::Final, rsv1: false, opcode: OpCode::Binary, mask: None, payload_len: 65536, header_len: 10,
        }));
    }

    #[test]
    fn encode_decode_round_trip_at_length_boundaries() {
        for len in [0u64, 1, 125, 126, 127, 65535, 65536, 1 << 20, (1 << 63) - 1] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let mut out = [0u8; MAX_HEADER];
                let n = encode_header(&mut out, Fin::Final, OpCode::Binary, len, mask);
                let want =
                    2 + if len < 126 {
                        0
                    } else if len < 65536 {
                        2
                    } else {
                        8
                    } + if mask.is_some() { 4 } else { 0 };
                assert_eq!(n, want);
                let Ok(Decoded::Done(h)) = decode_header(&out[..n]) else {
                    panic!("len {len}")
                };
                assert_eq!((h.payload_len, h.header_len, h.mask), (len, n, mask));
                for cut in 0..n {
                    assert_eq!(
                        decode_header(&out[..cut]),
                        Ok(Decoded::NeedMore),
                        "len {len} cut {cut}"
                    );
                }
            }
        }
    }

    #[test]
    fn encode_frame_is_header_then_payload() {
        assert_eq!(encode_frame(OpCode::Text, b"Hello"), b"\x81\x05Hello");
        let f = encode_frame(OpCode::Binary, &[0u8; 256]);
        assert_eq!(&f[..4], &[0x82, 0x7E, 0x01, 0x00]);
        assert_eq!(f.len(), 260);
    }

    #[test]
    fn frame_buf_puts_the_shortest_header_before_the_payload() {
        let mut buf = FrameBuf::default();
        // Biggest first, so a reused buffer must not leak old bytes into a smaller frame.
        for len in [70_000usize, 65_536, 65_535, 126, 125, 1, 0] {
            let payload = vec![b'a' + (len % 26) as u8; len];
            let frame = buf
                .build(OpCode::Binary, |out| out.extend_from_slice(&payload))
                .to_vec();
            assert_eq!(frame, encode_frame(OpCode::Binary, &payload), "len {len}");
            assert_eq!(unmasked_payload(&frame), &payload[..]);
        }
    }

    #[test]
    #[should_panic(expected = "not one complete unmasked frame")]
    fn unmasked_payload_refuses_a_masked_frame() {
        unmasked_payload(&[0x81, 0x81, 1, 2, 3, 4, b'x']);
    }
}
