//! Close codes (RFC 6455 §7.4), close payloads, and the one mapping from a
//! [`ProtocolError`] to the code we close with.
//!
//! Nothing else in the crate picks a close code for a protocol failure: every
//! path that fails a connection goes through `CloseCode::from(&ProtocolError)`.

use std::fmt;

/// A close status code (RFC 6455 §7.4.1 and the IANA registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: the purpose of the connection is fulfilled.
    Normal,
    /// 1001: the server is going down (or the page navigated away).
    Away,
    /// 1002: a protocol error.
    Protocol,
    /// 1003: a data type the endpoint cannot accept (binary on a chat channel).
    Unsupported,
    /// 1007: payload inconsistent with its type (invalid UTF-8 in text).
    Invalid,
    /// 1008: a policy was violated (slow consumer).
    Policy,
    /// 1009: a message too big to process.
    Size,
    /// 1010: the client expected an extension we did not negotiate.
    Extension,
    /// 1011: an unexpected condition on the server.
    Error,
    /// 1012–1014 and 3000–4999: codes a peer may send that we pass through.
    Other(u16),
}

impl CloseCode {
    /// The numeric code on the wire.
    pub fn as_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::Away => 1001,
            CloseCode::Protocol => 1002,
            CloseCode::Unsupported => 1003,
            CloseCode::Invalid => 1007,
            CloseCode::Policy => 1008,
            CloseCode::Size => 1009,
            CloseCode::Extension => 1010,
            CloseCode::Error => 1011,
            CloseCode::Other(c) => c,
        }
    }

    /// A code received from a peer, if it may be sent on the wire.
    ///
    /// RFC 6455 §7.4.1: 1004 is reserved, 1005, 1006 and 1015 "MUST NOT be set
    /// as a status code in a Close control frame by an endpoint"; 0–999 are
    /// not used and 1016–2999 are reserved for future RFCs. 3000–4999 belong
    /// to libraries and applications.
    pub fn from_wire(code: u16) -> Option<CloseCode> {
        Some(match code {
            1000 => CloseCode::Normal,
            1001 => CloseCode::Away,
            1002 => CloseCode::Protocol,
            1003 => CloseCode::Unsupported,
            1007 => CloseCode::Invalid,
            1008 => CloseCode::Policy,
            1009 => CloseCode::Size,
            1010 => CloseCode::Extension,
            1011 => CloseCode::Error,
            1012..=1014 | 3000..=4999 => CloseCode::Other(code),
            _ => return None,
        })
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_u16())
    }
}

/// A rule of RFC 6455 broken by the peer. Each ends the connection that broke it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// §5.2: RSV1–3 "MUST be 0 unless an extension is negotiated".
    ReservedBits,
    /// §5.2: opcodes 0x3–0x7 and 0xB–0xF are reserved.
    ReservedOpcode,
    /// §5.1: "a client MUST mask all frames that it sends to the server".
    UnmaskedFrame,
    /// §5.1: "A server MUST NOT mask any frames that it sends to the client".
    MaskedFrame,
    /// §5.5: "All control frames MUST NOT be fragmented".
    FragmentedControl,
    /// §5.5: "All control frames MUST have a payload length of 125 bytes or less".
    ControlTooLong,
    /// §5.2: the most significant bit of a 64-bit length "MUST be 0".
    LengthOverflow,
    /// §5.4: a continuation frame with no message in progress.
    UnexpectedContinuation,
    /// §5.4: a new data frame while a fragmented message is in progress.
    ExpectedContinuation,
    /// §5.5.1: a close payload of one byte, or with a code not allowed on the wire.
    BadCloseCode,
    /// §5.5.1 / §8.1: a close reason that is not UTF-8.
    BadCloseReason,
    /// §8.1: a text message that is not UTF-8.
    InvalidUtf8,
    /// The message (after reassembly, or after inflating) is over the configured limit.
    MessageTooBig,
    /// RFC 7692 §6.1: RSV1 on a frame that may not carry it (a control frame, a continuation
    /// frame), or on any frame when permessage-deflate was not negotiated.
    BadCompressedFrame,
    /// RFC 7692 §7.2.2: a compressed message that is not valid DEFLATE data.
    BadDeflate,
}

impl From<&ProtocolError> for CloseCode {
    fn from(e: &ProtocolError) -> CloseCode {
        match e {
            // Corrupt DEFLATE data: the payload is inconsistent with its type, as bad UTF-8 is.
            ProtocolError::InvalidUtf8
            | ProtocolError::BadCloseReason
            | ProtocolError::BadDeflate => CloseCode::Invalid,
            ProtocolError::MessageTooBig => CloseCode::Size,
            _ => CloseCode::Protocol,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ProtocolError::ReservedBits => "reserved bits set",
            ProtocolError::ReservedOpcode => "reserved opcode",
            ProtocolError::UnmaskedFrame => "unmasked client frame",
            ProtocolError::MaskedFrame => "masked server frame",
            ProtocolError::FragmentedControl => "fragmented control frame",
            ProtocolError::ControlTooLong => "control frame over 125 bytes",
            ProtocolError::LengthOverflow => "64-bit length with the top bit set",
            ProtocolError::UnexpectedContinuation => "continuation without a message",
            ProtocolError::ExpectedContinuation => "new message inside a fragmented one",
            ProtocolError::BadCloseCode => "invalid close code",
            ProtocolError::BadCloseReason => "close reason not UTF-8",
            ProtocolError::InvalidUtf8 => "text not UTF-8",
            ProtocolError::MessageTooBig => "message too big",
            ProtocolError::BadCompressedFrame => "RSV1 where no compressed message may start",
            ProtocolError::BadDeflate => "compressed message is not valid DEFLATE",
        };
        f.write_str(s)
    }
}

/// Decodes a close frame's payload (RFC 6455 §5.5.1): empty, or a 2-byte code
/// followed by a UTF-8 reason.
pub fn parse_close_payload(payload: &[u8]) -> Result<(Option<CloseCode>, &str), ProtocolError> {
    match payload.len() {
        0 => Ok((None, "")),
        1 => Err(ProtocolError::BadCloseCode),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let code = CloseCode::from_wire(code).ok_or(ProtocolError::BadCloseCode)?;
            let reason =
                std::str::from_utf8(&payload[2..]).map_err(|_| ProtocolError::BadCloseReason)?;
            Ok((Some(code), reason))
        }
    }
}

/// Writes a close payload (code and reason, the reason cut to fit 125 bytes on
/// a character boundary) into `out`; returns its length.
pub fn write_close_payload(code: CloseCode, reason: &str, out: &mut [u8; 125]) -> usize {
    out[..2].copy_from_slice(&code.as_u16().to_be_bytes());
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    out[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    2 + end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_codes_allowed_and_refused() {
        for ok in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            assert_eq!(CloseCode::from_wire(ok).map(CloseCode::as_u16), Some(ok));
        }
        for bad in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert_eq!(CloseCode::from_wire(bad), None, "{bad}");
        }
    }

    #[test]
    fn close_payloads() {
        assert_eq!(parse_close_payload(b""), Ok((None, "")));
        assert_eq!(
            parse_close_payload(b"\x03"),
            Err(ProtocolError::BadCloseCode)
        );
        assert_eq!(
            parse_close_payload(b"\x03\xe8bye"),
            Ok((Some(CloseCode::Normal), "bye"))
        );
        assert_eq!(
            parse_close_payload(b"\x03\xed"),
            Err(ProtocolError::BadCloseCode)
        ); // 1005
        assert_eq!(
            parse_close_payload(b"\x03\xe8\xff"),
            Err(ProtocolError::BadCloseReason)
        );
    }

    #[test]
    fn error_to_close_code_mapping() {
        assert_eq!(
            CloseCode::from(&ProtocolError::InvalidUtf8),
            CloseCode::Invalid
        );
        assert_eq!(
            CloseCode::from(&ProtocolError::BadCloseReason),
            CloseCode::Invalid
        );
        assert_eq!(
            CloseCode::from(&ProtocolError::MessageTooBig),
            CloseCode::Size
        );
        assert_eq!(
            CloseCode::from(&ProtocolError::ReservedBits),
            CloseCode::Protocol
        );
        assert_eq!(
            CloseCode::from(&ProtocolError::BadCloseCode),
            CloseCode::Protocol
        );
    }

    #[test]
    fn reason_is_cut_on_a_char_boundary() {
        let mut out = [0u8; 125];
        let reason = "é".repeat(100);
        let n = write_close_payload(CloseCode::Away, &reason, &mut out);
        assert!(n <= 125);
        assert_eq!(
            parse_close_payload(&out[..n]).unwrap().0,
            Some(CloseCode::Away)
        );
        assert!(std::str::from_utf8(&out[2..n]).is_ok());
    }
}
