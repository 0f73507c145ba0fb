//! The HTTP surface of SPEC §3: routing a request target to a [`Route`], the
//! Origin and CORS rules, and every plain answer (status line, headers, body).
//!
//! Routes are computed from the request alone; the answers (`answers`) are built
//! from a read-only [`View`] of the state that the server hands in. Sockets and
//! WebSocket state are not touched here. The browser client page is built into
//! the binary.

mod answers;

use std::fmt::Write;

pub use answers::{answer, check_origin, late_json, View};

/// The browser client (SPEC §5), served at `GET /`.
pub const CLIENT_PAGE: &str = include_str!("client.html");

/// The page's script, served at `GET /client.js` so that the page's CSP can say `script-src 'self'`.
pub const CLIENT_SCRIPT: &str = include_str!("client.js");

/// The page's style, served at `GET /client.css` (`style-src 'self'`).
pub const CLIENT_STYLE: &str = include_str!("client.css");

/// The page's icon, an SVG served at `GET /favicon.ico` (browsers ask for that path whatever
/// the page says; they take the type from `Content-Type`).
pub const FAVICON: &str = include_str!("favicon.svg");

/// Header lines sent with the page and its script, style and icon: no MIME sniffing, no referrer,
/// and a Content-Security-Policy that allows nothing but this origin's own script, style, icon and
/// socket (`connect-src 'self'` covers `ws:`/`wss:` to the same host in CSP 3), and forbids framing
/// (clickjacking), `<base>`, plugins and form submission (both forms are handled by script).
pub const PAGE_HEADERS: &str = "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n\
    Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'\r\n";

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    Page,
    /// `/client.js`, `/client.css`, `/favicon.ico`: the page's parts.
    Script,
    Style,
    Favicon,
    Health,
    Metrics,
    /// `/messages[?limit=N]`.
    Messages {
        limit: Option<usize>,
    },
    Rooms,
    /// `/rooms/{room}/messages[?since=ID][&limit=N]`; `room` is the raw (still percent-encoded) segment.
    RoomMessages {
        room: &'a str,
        since: Option<u64>,
        limit: Option<usize>,
    },
    Echo,
    Global,
    /// `/api/rooms/{room}/{call}` (the server API); `room` is the raw segment.
    Api {
        room: &'a str,
        call: ApiCall,
    },
    /// `/ws/{room}/{client}`; both raw segments.
    Room {
        room: &'a str,
        client: &'a str,
        since: Option<u64>,
        epoch: Option<String>,
        /// `?device=`, percent-decoded: the page's per-browser id, so that two tabs of one
        /// person are one entry in the room.
        device: Option<String>,
    },
    /// `/ws/{client_id}` under `--compat fastapi`: the FastAPI documentation example's chat; the raw
    /// segment.
    Demo {
        client: &'a str,
    },
    NotFound,
}

impl Route<'_> {
    /// Whether this route is a WebSocket endpoint (needs an upgrade).
    pub fn is_websocket(&self) -> bool {
        matches!(
            self,
            Route::Echo | Route::Global | Route::Room { .. } | Route::Demo { .. }
        )
    }
}

/// A server API call on a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiCall {
    /// `messages`: GET reads the history, POST publishes.
    Messages,
    /// `presence`: GET lists who is in the room.
    Presence,
    /// `disconnect`: POST closes a member's connections.
    Disconnect,
}

/// Which optional routes are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routes {
    /// `/echo`; false under `--no-echo`.
    pub echo: bool,
    /// `/ws/{client_id}`, under `--compat fastapi`; otherwise that path is `404` (SPEC §4.4).
    pub demo: bool,
}

/// Maps a path and query to a route. `echo` is false under `--no-echo`.
pub fn route<'a>(path: &'a str, query: Option<&'a str>, echo: bool) -> Route<'a> {
    route_with(path, query, Routes { echo, demo: false })
}

/// Maps a path and query to a route, with the optional routes of `routes`.
pub fn route_with<'a>(path: &'a str, query: Option<&'a str>, routes: Routes) -> Route<'a> {
    let echo = routes.echo;
    let since = || {
        query
            .and_then(|q| query_param(q, "since"))
            .and_then(|v| v.parse().ok())
    };
    // Not a number: the default page size (the chat clamps numbers to its range).
    let limit = || {
        query
            .and_then(|q| query_param(q, "limit"))
            .and_then(|v| v.parse().ok())
    };
    let mut segs = path.strip_prefix('/').unwrap_or(path).split('/');
    match (segs.next(), segs.next(), segs.next(), segs.next()) {
        (Some(""), None, _, _) => Route::Page,
        (Some("client.js"), None, _, _) => Route::Script,
        (Some("client.css"), None, _, _) => Route::Style,
        (Some("favicon.ico"), None, _, _) => Route::Favicon,
        (Some("healthz"), None, _, _) => Route::Health,
        (Some("metrics"), None, _, _) => Route::Metrics,
        (Some("messages"), None, _, _) => Route::Messages { limit: limit() },
        (Some("rooms"), None, _, _) => Route::Rooms,
        (Some("rooms"), Some(room), Some("messages"), None) => Route::RoomMessages {
            room,
            since: since(),
            limit: limit(),
        },
        (Some("api"), Some("rooms"), Some(room), Some(call)) if segs.next().is_none() => {
            let call = match call {
                "messages" => ApiCall::Messages,
                "presence" => ApiCall::Presence,
                "disconnect" => ApiCall::Disconnect,
                _ => return Route::NotFound,
            };
            Route::Api { room, call }
        }
        (Some("echo"), None, _, _) if echo => Route::Echo,
        (Some("ws"), None, _, _) => Route::Global,
        (Some("ws"), Some(client), None, _) if routes.demo => Route::Demo { client },
        (Some("ws"), Some(room), Some(client), None) => Route::Room {
            room,
            client,
            since: since(),
            epoch: query
                .and_then(|q| query_param(q, "epoch"))
                .map(|e| percent_decode(e).into_owned()),
            device: query
                .and_then(|q| query_param(q, "device"))
                .map(|t| percent_decode(t).chars().take(64).collect()),
        },
        _ => Route::NotFound,
    }
}

/// The raw value of `name` in a query string.
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

pub(crate) use crate::chat::percent_decode;

/// A plain HTTP answer.
pub struct Response<'a> {
    pub status: u16,
    pub content_type: &'a str,
    pub body: &'a [u8],
    /// Extra header lines, each ending in `\r\n`.
    pub extra: &'a str,
}

/// Writes `resp` as HTTP/1.1 bytes; `head_only` omits the body (HEAD), keeping its length.
pub fn write_response(resp: &Response<'_>, keep_alive: bool, head_only: bool) -> Vec<u8> {
    let mut head = String::with_capacity(192 + resp.extra.len());
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{}Connection: {}\r\n\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len(),
        resp.extra,
        if keep_alive { "keep-alive" } else { "close" }
    );
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(resp.body);
    }
    out
}

/// An error answer with a one-line text body.
pub fn error_response(status: u16, extra: &str) -> Vec<u8> {
    let body = format!("{} {}\n", status, reason(status));
    write_response(
        &Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes(),
            extra,
        },
        false,
        false,
    )
}

/// The standard reason phrase.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        501 => "Not Implemented",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/", None, true), Route::Page);
        assert_eq!(route("/healthz", None, true), Route::Health);
        assert_eq!(route("/echo", None, true), Route::Echo);
        assert_eq!(route("/echo", None, false), Route::NotFound);
        assert_eq!(route("/ws", None, true), Route::Global);
        assert_eq!(route("/ws/lobby", None, true), Route::NotFound);
        assert_eq!(route("/ws/a/b/c", None, true), Route::NotFound);
        assert_eq!(
            route("/ws/a%20b/bob", Some("since=5&epoch=e%2D1"), true),
            Route::Room {
                room: "a%20b",
                client: "bob",
                since: Some(5),
                epoch: Some("e-1".into()),
                device: None,
            }
        );
        assert_eq!(
            route("/rooms/x/messages", Some("since=2"), true),
            Route::RoomMessages {
                room: "x",
                since: Some(2),
                limit: None
            }
        );
        assert_eq!(
            route("/rooms/x/messages", Some("limit=10&since=2"), true),
            Route::RoomMessages {
                room: "x",
                since: Some(2),
                limit: Some(10)
            }
        );
        assert_eq!(
            route("/messages", Some("limit=5"), true),
            Route::Messages { limit: Some(5) }
        );
        assert_eq!(
            route("/messages", Some("limit=-1"), true),
            Route::Messages { limit: None }
        );
        assert_eq!(route("/rooms/x", None, true), Route::NotFound);
        assert_eq!(
            route("/api/rooms/x/presence", None, true),
            Route::Api {
                room: "x",
                call: ApiCall::Presence
            }
        );
        assert_eq!(route("/api/rooms/x/other", None, true), Route::NotFound);
        assert_eq!(
            route("/api/rooms/x/messages/y", None, true),
            Route::NotFound
        );
        assert_eq!(route("/nope", None, true), Route::NotFound);
        assert_eq!(route("/healthz/", None, true), Route::NotFound);
        let compat = Routes {
            echo: true,
            demo: true,
        };
        assert_eq!(
            route_with("/ws/1700000000", None, compat),
            Route::Demo {
                client: "1700000000"
            }
        );
        assert!(route_with("/ws/7", None, compat).is_websocket());
        assert_eq!(route_with("/ws", None, compat), Route::Global);
        assert_eq!(route_with("/ws/a/b/c", None, compat), Route::NotFound);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2Fc"), "a b/c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(percent_decode("%FF"), "\u{FFFD}");
    }

    #[test]
    fn response_bytes() {
        let r = write_response(
            &Response {
                status: 200,
                content_type: "application/json",
                body: b"{}",
                extra: "",
            },
            true,
            false,
        );
        let s = String::from_utf8(r).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(s.contains("Content-Length: 2\r\n"));
        assert!(s.ends_with("\r\n\r\n{}"));
        let head = write_response(
            &Response {
                status: 200,
                content_type: "text/html",
                body: b"abc",
                extra: "",
            },
            false,
            true,
        );
        assert!(String::from_utf8(head)
            .unwrap()
            .ends_with("Connection: close\r\n\r\n"));
    }
}
