//! The HTTP/1.1 request head and the WebSocket opening handshake (RFC 6455 §4).
//!
//! Owns parsing a request head with `httparse` (capped at [`MAX_HEAD`]), the
//! upgrade checks of §4.2.1, and the `Sec-WebSocket-Accept` key of §4.2.2.
//! Routing and the bodies of plain HTTP answers belong to `http/`; sockets to
//! the reactor. Every failure is a [`HandshakeError`] with exactly one status.

use base64::Engine;

use super::frame::Decoded;

/// Largest request head we buffer (SPEC §3: over 8 KiB is answered 431).
pub const MAX_HEAD: usize = 8 * 1024;

/// Largest request body a service may ask the reactor to read (see `Service::body_limit`).
pub const MAX_BODY: usize = 64 * 1024;

/// Most header lines in one request; more is answered 431 as well.
const MAX_HEADERS: usize = 48;

/// `Sec-WebSocket-Extensions` lines kept from one request; more are ignored (their offers declined).
pub const MAX_EXTENSION_LINES: usize = 4;

/// §1.3: the GUID appended to the client's key before hashing.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The request method, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    /// Answered 405 except where a route takes it (the server API).
    Post,
    /// Any other method: answered 405.
    Other,
}

/// A parsed request head. Borrows from the receive buffer.
#[derive(Debug)]
pub struct Request<'b> {
    pub method: Method,
    /// The request target as sent: path and optional `?query`.
    pub target: &'b str,
    /// Whether the connection may carry another request after this one
    /// (HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `keep-alive`).
    pub keep_alive: bool,
    /// A body follows the head (Content-Length > 0 or chunked): we read no
    /// bodies, so such a connection is answered and closed, unless the service asked for a
    /// bounded body (then it is in `body` and this is false).
    pub has_body: bool,
    /// `Content-Length`, when present and a number.
    pub content_length: Option<usize>,
    /// The body, when the reactor read one for the service; empty otherwise.
    pub body: &'b [u8],
    /// HTTP/1.1 (or later): RFC 6455 §4.1 asks an upgrade for at least that.
    pub http11: bool,
    pub origin: Option<&'b str>,
    /// The value of `Upgrade`, if present.
    pub upgrade: Option<&'b [u8]>,
    /// `Connection` lists the `upgrade` token.
    pub connection_upgrade: bool,
    pub key: Option<&'b [u8]>,
    pub version: Option<&'b [u8]>,
    /// The value of `Authorization` (a connection token or an API key; never logged).
    pub authorization: Option<&'b str>,
    /// The value of `Sec-WebSocket-Protocol`, if present (§4.2.1 (8)).
    pub protocols: Option<&'b str>,
    /// The values of the first `Sec-WebSocket-Extensions` lines (§9.1), empty where absent.
    pub extensions: [&'b [u8]; MAX_EXTENSION_LINES],
}

impl Request<'_> {
    /// The path part of the target.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target, |(p, _)| p)
    }

    /// Every `Sec-WebSocket-Extensions` value kept, in order.
    pub fn extension_lines(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.extensions.iter().copied().filter(|v| !v.is_empty())
    }

    /// The query part of the target, without `?`.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }
}

/// Why a request cannot be served. Each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not a well-formed HTTP/1.x request head.
    Malformed,
    /// The head is over [`MAX_HEAD`] or has too many header lines.
    HeadTooLarge,
    /// §4.2.1 (1): the upgrade request "MUST be a GET".
    MethodNotAllowed,
    /// A WebSocket endpoint asked for without `Upgrade` at all.
    UpgradeRequired,
    /// §4.2.1 (3): `Upgrade` must contain "websocket".
    BadUpgrade,
    /// §4.2.1 (4): `Connection` must contain "Upgrade".
    BadConnection,
    /// §4.2.1 (5): `Sec-WebSocket-Key` must decode to 16 bytes.
    BadKey,
    /// §4.2.1 (6): `Sec-WebSocket-Version` must be 13.
    BadVersion,
    /// §4.1: "The method of the request MUST be GET, and the HTTP version MUST be at least 1.1."
    OldHttp,
    /// An upgrade announcing a body (`Content-Length`, `Transfer-Encoding`): whatever follows the
    /// head would be read as frames, so it is refused (SPEC §3).
    UpgradeWithBody,
}

impl HandshakeError {
    /// The one place a handshake failure becomes a status line.
    pub fn status(self) -> u16 {
        match self {
            HandshakeError::Malformed
            | HandshakeError::BadUpgrade
            | HandshakeError::BadConnection
            | HandshakeError::BadKey
            | HandshakeError::OldHttp
            | HandshakeError::UpgradeWithBody => 400,
            HandshakeError::HeadTooLarge => 431,
            HandshakeError::MethodNotAllowed => 405,
            HandshakeError::UpgradeRequired | HandshakeError::BadVersion => 426,
        }
    }
}

/// Parses a request head from the start of `buf`.
///
/// `Done((request, head_len))` when the head is complete; `NeedMore` while it
/// is not and `buf` is still under [`MAX_HEAD`].
pub fn parse(buf: &[u8]) -> Result<Decoded<(Request<'_>, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
            return Err(HandshakeError::HeadTooLarge)
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(HandshakeError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::HeadTooLarge),
        Err(_) => return Err(HandshakeError::Malformed),
    };
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        Some("POST") => Method::Post,
        _ => Method::Other,
    };
    let target = req.path.ok_or(HandshakeError::Malformed)?;
    if !target.starts_with('/') {
        return Err(HandshakeError::Malformed);
    }
    let http11 = req.version == Some(1);
    let mut out = Request {
        method,
        target,
        keep_alive: http11,
        has_body: false,
        content_length: None,
        body: &[],
        http11,
        origin: None,
        upgrade: None,
        connection_upgrade: false,
        key: None,
        version: None,
        authorization: None,
        protocols: None,
        extensions: [&[]; MAX_EXTENSION_LINES],
    };
    let mut chunked = false;
    let mut extension_lines = 0;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"upgrade") {
                    out.connection_upgrade = true;
                } else if token.eq_ignore_ascii_case(b"close") {
                    out.keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    out.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            out.upgrade = Some(trim(h.value));
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            out.key = Some(trim(h.value));
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            out.version = Some(trim(h.value));
        } else if name.eq_ignore_ascii_case("authorization") {
            out.authorization = std::str::from_utf8(trim(h.value)).ok();
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            out.protocols = std::str::from_utf8(trim(h.value)).ok();
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            if let Some(slot) = out.extensions.get_mut(extension_lines) {
                *slot = trim(h.value);
                extension_lines += 1;
            }
        } else if name.eq_ignore_ascii_case("origin") {
            out.origin = std::str::from_utf8(trim(h.value)).ok();
        } else if name.eq_ignore_ascii_case("content-length") {
            out.has_body |= trim(h.value) != b"0";
            out.content_length = std::str::from_utf8(trim(h.value))
                .ok()
                .and_then(|v| v.parse().ok());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            out.has_body = true;
            chunked = true;
        }
    }
    if chunked {
        // Both framings at once (a smuggling attempt, RFC 9112 §6.3): no body is read by length.
        out.content_length = None;
    }
    Ok(Decoded::Done((out, len)))
}

/// Checks an upgrade request (§4.2.1) and returns the `Sec-WebSocket-Accept` value.
pub fn check_upgrade(req: &Request<'_>) -> Result<[u8; 28], HandshakeError> {
    // HEAD works where GET does (SPEC §3): without `Upgrade` both get 426.
    if req.method == Method::Head && req.upgrade.is_none() {
        return Err(HandshakeError::UpgradeRequired);
    }
    if req.method != Method::Get {
        return Err(HandshakeError::MethodNotAllowed);
    }
    let upgrade = req.upgrade.ok_or(HandshakeError::UpgradeRequired)?;
    if !req.http11 {
        return Err(HandshakeError::OldHttp);
    }
    if req.has_body {
        return Err(HandshakeError::UpgradeWithBody);
    }
    if !upgrade
        .split(|&b| b == b',')
        .map(trim)
        .any(|t| t.eq_ignore_ascii_case(b"websocket"))
    {
        return Err(HandshakeError::BadUpgrade);
    }
    if !req.connection_upgrade {
        return Err(HandshakeError::BadConnection);
    }
    if req.version != Some(b"13") {
        return Err(HandshakeError::BadVersion);
    }
    let key = req.key.ok_or(HandshakeError::BadKey)?;
    let mut raw = [0u8; 18];
    match base64::engine::general_purpose::STANDARD.decode_slice(key, &mut raw) {
        Ok(16) => {}
        _ => return Err(HandshakeError::BadKey),
    }
    Ok(accept_key(key))
}

/// The whole answer to a refused request: the status of `err`, the headers it calls for
/// (`Sec-WebSocket-Version: 13` with 426, §4.4; `Allow` with 405), a one-line text body, and
/// `Connection: close`.
pub fn refusal(err: HandshakeError) -> Vec<u8> {
    let status = err.status();
    let reason = match status {
        400 => "Bad Request",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let extra = match err {
        HandshakeError::BadVersion | HandshakeError::UpgradeRequired => {
            "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n"
        }
        HandshakeError::MethodNotAllowed => "Allow: GET\r\n",
        _ => "",
    };
    let body = format!("{status} {reason}\n");
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `base64(SHA-1(key ++ GUID))` (§4.2.2 step 5.4).
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(GUID);
    let mut out = [0u8; 28];
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(sha.digest().bytes(), &mut out)
        .expect("bug: a SHA-1 digest is 28 base64 bytes");
    debug_assert_eq!(n, 28);
    out
}

/// Adds `Sec-WebSocket-Protocol: protocol` (§4.2.2 step 5.5: one of the values the client offered)
/// to a complete 101 answer, before its blank line.
pub fn with_subprotocol(mut answer: Vec<u8>, protocol: &str) -> Vec<u8> {
    debug_assert!(answer.ends_with(b"\r\n\r\n"), "bug: not a complete head");
    let at = answer.len() - 2;
    let line = format!("Sec-WebSocket-Protocol: {protocol}\r\n");
    answer.splice(at..at, line.into_bytes());
    answer
}

/// The `101 Switching Protocols` answer, with the `Sec-WebSocket-Extensions` we agreed to (§9.1).
pub fn switching_protocols(accept: &[u8; 28], extensions: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept);
    if let Some(ext) = extensions {
        out.extend_from_slice(b"\r\nSec-WebSocket-Extensions: ");
        out.extend_from_slice(ext.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
    out
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subprotocol_line_goes_before_the_blank_line() {
        let out = with_subprotocol(switching_protocols(&[b'a'; 28], None), "wisp");
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with("\r\nSec-WebSocket-Protocol: wisp\r\n\r\n"),
            "{text}"
        );
        assert!(text.starts_with("HTTP/1.1 101 "));
    }

    #[test]
    fn content_length_is_kept_unless_chunked_too() {
        let req = b"POST /api/x HTTP/1.1\r\nContent-Length: 12\r\n\r\n";
        let Ok(Decoded::Done((r, _))) = parse(req) else {
            panic!("bug: should parse")
        };
        assert_eq!(
            (r.method, r.content_length, r.has_body),
            (Method::Post, Some(12), true)
        );
        assert!(r.body.is_empty());
        let smuggled =
            b"POST /api/x HTTP/1.1\r\nContent-Length: 12\r\nTransfer-Encoding: chunked\r\n\r\n";
        let Ok(Decoded::Done((r, _))) = parse(smuggled) else {
            panic!("bug: should parse")
        };
        assert_eq!((r.content_length, r.has_body), (None, true));
    }

    #[test]
    fn authorization_and_protocols_are_kept() {
        let req = b"GET /ws HTTP/1.1\r\nAuthorization: Bearer t.k.n\r\nSec-WebSocket-Protocol: wisp, a.b.c\r\n\r\n";
        let Ok(Decoded::Done((r, _))) = parse(req) else {
            panic!("bug: should parse")
        };
        assert_eq!(r.authorization, Some("Bearer t.k.n"));
        assert_eq!(r.protocols, Some("wisp, a.b.c"));
    }

    const GOOD: &[u8] = b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://a.example\r\n\r\n";

    fn parsed(bytes: &[u8]) -> Request<'_> {
        match parse(bytes) {
            Ok(Decoded::Done((r, n))) => {
                assert_eq!(n, bytes.len());
                r
            }
            other => panic!("{other:?}"),
        }
    }

    fn with(find: &str, replace: &str) -> Vec<u8> {
        String::from_utf8(GOOD.to_vec())
            .unwrap()
            .replace(find, replace)
            .into_bytes()
    }

    #[test]
    fn rfc_accept_key_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn good_upgrade() {
        let r = parsed(GOOD);
        assert_eq!(r.path(), "/echo");
        assert_eq!(r.origin, Some("http://a.example"));
        assert_eq!(&check_upgrade(&r).unwrap(), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let resp = switching_protocols(&check_upgrade(&r).unwrap(), None);
        assert!(resp.starts_with(b"HTTP/1.1 101 "));
        assert_eq!(r.extension_lines().count(), 0);
    }

    #[test]
    fn extension_lines_are_kept_in_order() {
        let bytes = with(
            "Host: x\r\n",
            "Host: x\r\nSec-WebSocket-Extensions: foo\r\nsec-websocket-extensions:  permessage-deflate \r\n",
        );
        let r = parsed(&bytes);
        let lines: Vec<&[u8]> = r.extension_lines().collect();
        assert_eq!(lines, [&b"foo"[..], b"permessage-deflate"]);
        let resp = switching_protocols(&check_upgrade(&r).unwrap(), Some("permessage-deflate"));
        assert!(resp.ends_with(b"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"));
    }

    #[test]
    fn partial_head_needs_more_at_every_cut() {
        for cut in 0..GOOD.len() {
            assert!(
                matches!(parse(&GOOD[..cut]), Ok(Decoded::NeedMore)),
                "cut {cut}"
            );
        }
    }

    macro_rules! upgrade_refused {
        ($($name:ident: $find:expr => $replace:expr, $err:expr, $status:expr;)*) => {$(
            #[test]
            fn $name() {
                let bytes = with($find, $replace);
                let err = check_upgrade(&parsed(&bytes)).unwrap_err();
                assert_eq!((err, err.status()), ($err, $status));
            }
        )*};
    }

    upgrade_refused! {
        post_405: "GET /echo" => "POST /echo", HandshakeError::MethodNotAllowed, 405;
        no_upgrade_426: "Upgrade: websocket\r\n" => "", HandshakeError::UpgradeRequired, 426;
        upgrade_not_websocket_400: "Upgrade: websocket" => "Upgrade: h2c", HandshakeError::BadUpgrade, 400;
        connection_without_upgrade_400: "keep-alive, Upgrade" => "keep-alive", HandshakeError::BadConnection, 400;
        missing_key_400: "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" => "", HandshakeError::BadKey, 400;
        short_key_400: "dGhlIHNhbXBsZSBub25jZQ==" => "c2hvcnQ=", HandshakeError::BadKey, 400;
        long_key_400: "dGhlIHNhbXBsZSBub25jZQ==" => "dGhlIHNhbXBsZSBub25jZXh4eA==", HandshakeError::BadKey, 400;
        key_not_base64_400: "dGhlIHNhbXBsZSBub25jZQ==" => "!!!!!!!!!!!!!!!!!!!!!!==", HandshakeError::BadKey, 400;
        version_12_426: "Version: 13" => "Version: 12", HandshakeError::BadVersion, 426;
        missing_version_426: "Sec-WebSocket-Version: 13\r\n" => "", HandshakeError::BadVersion, 426;
        http_1_0_upgrade_400: "HTTP/1.1" => "HTTP/1.0", HandshakeError::OldHttp, 400;
        upgrade_with_content_length_400: "Host: x\r\n" => "Host: x\r\nContent-Length: 5\r\n", HandshakeError::UpgradeWithBody, 400;
        upgrade_with_chunked_body_400: "Host: x\r\n" => "Host: x\r\nTransfer-Encoding: chunked\r\n", HandshakeError::UpgradeWithBody, 400;
    }

    #[test]
    fn header_tokens_are_case_insensitive() {
        let bytes = with("Upgrade: websocket", "upgrade: WebSocket")
            .replace_all("Connection: keep-alive, Upgrade", "connection: UPGRADE");
        assert!(check_upgrade(&parsed(&bytes)).is_ok());
    }

    trait ReplaceAll {
        fn replace_all(self, a: &str, b: &str) -> Vec<u8>;
    }
    impl ReplaceAll for Vec<u8> {
        fn replace_all(self, a: &str, b: &str) -> Vec<u8> {
            String::from_utf8(self).unwrap().replace(a, b).into_bytes()
        }
    }

    #[test]
    fn malformed_heads_400() {
        for bad in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET /x HTTP/9.9\r\n\r\n",
            b"GET x HTTP/1.1\r\n\r\n",
            b"\x00\x01\x02\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            assert_eq!(
                parse(bad).unwrap_err(),
                HandshakeError::Malformed,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn oversize_heads_431() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert_eq!(parse(&big).unwrap_err(), HandshakeError::HeadTooLarge);
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse(&big).unwrap_err(), HandshakeError::HeadTooLarge);
        let many: String = (0..100).map(|i| format!("X{i}: y\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            parse(req.as_bytes()).unwrap_err(),
            HandshakeError::HeadTooLarge
        );
    }

    #[test]
    fn keep_alive_rules() {
        assert!(parsed(b"GET / HTTP/1.1\r\n\r\n").keep_alive);
        assert!(!parsed(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!parsed(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(parsed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(parsed(b"GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\n").has_body);
    }

    #[test]
    fn path_and_query() {
        let r = parsed(b"GET /ws/a/b?since=3&epoch=x HTTP/1.1\r\n\r\n");
        assert_eq!((r.path(), r.query()), ("/ws/a/b", Some("since=3&epoch=x")));
    }
}
