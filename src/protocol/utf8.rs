//! Incremental UTF-8 validation for text messages that arrive in pieces.
//!
//! RFC 6455 §8.1: "When an endpoint is to interpret a byte stream as UTF-8 but
//! finds that the byte stream is not, in fact, a valid UTF-8 stream, that
//! endpoint MUST _Fail the WebSocket Connection_." We fail on the first byte
//! that cannot start or continue a valid sequence, even in the middle of a
//! fragment or of a frame still arriving, so a peer cannot make us buffer a
//! message we already know we will refuse.
//!
//! The bulk of each piece is checked by `core::str::from_utf8`, whose ASCII
//! path works a word at a time and which reports a truncated sequence at the
//! end (`error_len() == None`) separately from an invalid one. Only the (at
//! most three) bytes of a sequence split across pieces are carried over.

/// The text is not UTF-8 (the first invalid byte has been seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

/// Validation state carried between pieces of one text message.
#[derive(Debug, Default, Clone, Copy)]
pub struct Utf8Validator {
    /// Bytes of a sequence cut off at the end of the previous piece.
    /// INVARIANT: `partial[..len]` is a valid, incomplete UTF-8 prefix; `len < 4`.
    partial: [u8; 4],
    len: u8,
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next piece of the message.
    pub fn feed(&mut self, mut piece: &[u8]) -> Result<(), InvalidUtf8> {
        if self.len > 0 {
            // Complete the carried sequence one byte at a time (at most 3 bytes).
            while self.len > 0 {
                let Some((&b, rest)) = piece.split_first() else {
                    return Ok(());
                };
                self.partial[self.len as usize] = b;
                let n = self.len as usize + 1;
                match core::str::from_utf8(&self.partial[..n]) {
                    Ok(_) => self.len = 0,
                    Err(e) if e.error_len().is_none() => self.len = n as u8,
                    Err(_) => return Err(InvalidUtf8),
                }
                piece = rest;
            }
        }
        match core::str::from_utf8(piece) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let rest = &piece[e.valid_up_to()..];
                self.partial[..rest.len()].copy_from_slice(rest);
                self.len = rest.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// The message is complete: a sequence still open at its end is invalid.
    pub fn finish(&self) -> Result<(), InvalidUtf8> {
        if self.len == 0 {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_everywhere(bytes: &[u8]) -> Vec<Result<(), InvalidUtf8>> {
        let mut out = Vec::new();
        for cut in 0..=bytes.len() {
            let mut v = Utf8Validator::new();
            let r = v
                .feed(&bytes[..cut])
                .and_then(|_| v.feed(&bytes[cut..]))
                .and_then(|_| v.finish());
            out.push(r);
        }
        out
    }

    #[test]
    fn valid_text_passes_at_every_split() {
        let text = "κόσμε Hello-µ@ßöäüàá-UTF-8!! 𝄞 \u{10FFFF}";
        assert!(split_everywhere(text.as_bytes()).iter().all(|r| r.is_ok()));
    }

    #[test]
    fn invalid_text_fails_at_every_split() {
        for bad in [
            &b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"[..],
            b"\xff",
            b"\xc0\xaf",
            b"\xf4\x90\x80\x80",
            b"\xed\xa0\x80",
            b"ab\x80",
        ] {
            assert!(split_everywhere(bad).iter().all(|r| r.is_err()), "{bad:?}");
        }
    }

    #[test]
    fn fails_on_first_bad_byte_before_message_end() {
        // Autobahn 6.4.1: the bad sequence is known to be bad before the rest arrives.
        let mut v = Utf8Validator::new();
        assert!(v.feed("κόσμε".as_bytes()).is_ok());
        assert_eq!(v.feed(b"\xf4\x90"), Err(InvalidUtf8));
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xed\xa0"), Err(InvalidUtf8));
    }

    #[test]
    fn truncated_sequence_fails_only_at_finish() {
        let mut v = Utf8Validator::new();
        assert!(v.feed(b"ok \xf0\x9d").is_ok());
        assert_eq!(v.finish(), Err(InvalidUtf8));
        assert!(v.feed(b"\x84\x9e").is_ok());
        assert!(v.finish().is_ok());
    }

    #[test]
    fn byte_by_byte_feed() {
        let text = "𝄞 ß ü €";
        let mut v = Utf8Validator::new();
        for b in text.as_bytes() {
            v.feed(std::slice::from_ref(b)).unwrap();
        }
        v.finish().unwrap();
    }
}
