//! Every plain HTTP answer of SPEC §3, built from a read-only [`View`] of the daemon's state.
//!
//! Nothing here is called from inside the loop's bookkeeping: the server hands over a `View` (the
//! chat, the counters, the transport's gauges) and gets back the bytes to send. Origin and CORS rules
//! live here too, for plain answers and for upgrades alike.

use crate::chat::{self, Chat};
use crate::metrics::{Gauges, Metrics, Transport};
use crate::protocol::handshake::{Method, Request};

use super::{
    percent_decode, write_response, Response, Route, CLIENT_PAGE, CLIENT_SCRIPT, CLIENT_STYLE,
    FAVICON, PAGE_HEADERS,
};

/// What an answer may read: the state as it is at this turn.
pub struct View<'a> {
    pub chat: &'a Chat,
    pub metrics: &'a Metrics,
    pub transport: Transport,
    pub uptime_s: u64,
    /// `Some(up)` in cluster mode.
    pub redis_up: Option<bool>,
    /// Wall-clock time, microseconds since the Unix epoch.
    pub wall: u64,
    /// `--allowed-origin` values (empty: any origin).
    pub allowed_origins: &'a [String],
    /// `--auth token` is on (said in /healthz for the page).
    pub auth_token: bool,
}

/// Whether an upgrade (or a CORS request) from `origin` is allowed; `Err(403)` when not.
pub fn check_origin(allowed: &[String], origin: Option<&str>) -> Result<(), u16> {
    if allowed.is_empty() {
        return Ok(());
    }
    match origin {
        Some(o)
            if allowed
                .iter()
                .any(|a| a.eq_ignore_ascii_case(o.trim_end_matches('/'))) =>
        {
            Ok(())
        }
        _ => Err(403),
    }
}

/// The CORS header lines for a JSON answer.
fn cors(allowed: &[String], origin: Option<&str>) -> String {
    if allowed.is_empty() {
        return "Access-Control-Allow-Origin: *\r\n".into();
    }
    match origin {
        Some(o) if check_origin(allowed, Some(o)).is_ok() => {
            format!("Access-Control-Allow-Origin: {o}\r\nVary: Origin\r\n")
        }
        _ => "Vary: Origin\r\n".into(),
    }
}

/// A JSON answer given after the request ([`crate::reactor::Answer::Later`]): `200`, with the
/// CORS headers `answer` would give, and `Connection: close`.
pub fn late_json(body: &str, allowed: &[String], origin: Option<&str>, head_only: bool) -> Vec<u8> {
    write_response(
        &Response {
            status: 200,
            content_type: "application/json",
            body: body.as_bytes(),
            extra: &cors(allowed, origin),
        },
        false,
        head_only,
    )
}

/// The answer to a plain (non-upgrade) request for `route`, keep-alive as the request allows.
pub fn answer(route: &Route<'_>, req: &Request<'_>, view: &View<'_>) -> Vec<u8> {
    if matches!(req.method, Method::Other | Method::Post) && *route != Route::NotFound {
        return super::error_response(405, "Allow: GET, HEAD\r\n");
    }
    let keep_alive = req.keep_alive && !req.has_body;
    let head_only = req.method == Method::Head;
    const JSON: &str = "application/json";
    let body: String;
    let (status, ctype, bytes): (u16, &str, &[u8]) = match route {
        Route::Page => (200, "text/html; charset=utf-8", CLIENT_PAGE.as_bytes()),
        Route::Script => (
            200,
            "text/javascript; charset=utf-8",
            CLIENT_SCRIPT.as_bytes(),
        ),
        Route::Style => (200, "text/css; charset=utf-8", CLIENT_STYLE.as_bytes()),
        Route::Favicon => (200, "image/svg+xml", FAVICON.as_bytes()),
        Route::Health => {
            body = health_json(view);
            (200, JSON, body.as_bytes())
        }
        Route::Metrics => {
            body = view.metrics.render(&gauges(view));
            (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                body.as_bytes(),
            )
        }
        Route::Messages { limit } => {
            body = view.chat.messages_json(*limit, view.wall);
            (200, JSON, body.as_bytes())
        }
        Route::Rooms => {
            body = view.chat.rooms_json(view.wall);
            (200, JSON, body.as_bytes())
        }
        Route::RoomMessages { room, since, limit } => {
            body = view
                .chat
                .room_messages_json(&percent_decode(room), *since, *limit, view.wall);
            (200, JSON, body.as_bytes())
        }
        _ => {
            return write_response(
                &Response {
                    status: 404,
                    content_type: "text/plain; charset=utf-8",
                    body: b"404 Not Found\n",
                    extra: "",
                },
                keep_alive,
                head_only,
            )
        }
    };
    let extra = if ctype == JSON {
        cors(view.allowed_origins, req.origin)
    } else if matches!(
        route,
        Route::Page | Route::Script | Route::Style | Route::Favicon
    ) {
        PAGE_HEADERS.to_owned()
    } else {
        String::new()
    };
    write_response(
        &Response {
            status,
            content_type: ctype,
            body: bytes,
            extra: &extra,
        },
        keep_alive,
        head_only,
    )
}

/// `GET /healthz`.
fn health_json(view: &View<'_>) -> String {
    let mut v = serde_json::json!({
        "status": "ok",
        "connections": view.transport.websockets_active,
        "rooms": view.chat.counts().rooms,
        "uptime_s": view.uptime_s,
    });
    if let Some(up) = view.redis_up {
        v["redis"] = if up { "up" } else { "down" }.into();
    }
    // Only under --auth token, so the page can say a token is needed.
    if view.auth_token {
        v["auth"] = "token".into();
    }
    v.to_string()
}

/// The gauges `/metrics` reads at render time.
fn gauges(view: &View<'_>) -> Gauges {
    let counts: chat::Counts = view.chat.counts();
    Gauges {
        connections_active: view.transport.connections_active,
        websockets_active: view.transport.websockets_active,
        rooms_active: counts.rooms,
        history_messages: counts.history_messages,
        history_bytes: counts.history_bytes,
        history_dropped: view.chat.history_dropped_total(),
        messages_expired: view.chat.expired_total(),
        rate_limited: view.chat.rate_limited_total(),
        typing: view.chat.typing_total(),
        typing_limited: view.chat.typing_limited_total(),
        uptime_s: view.uptime_s,
        outbound_bytes_pending: view.transport.outbound_bytes_pending,
        connections_paused: view.transport.connections_paused,
        redis_up: view.redis_up,
    }
}
