//! The counters of SPEC §6, rendered as Prometheus text.
//!
//! Plain integers: the reactor is the only thread that counts, so there is no
//! atomic on the hot path. Gauges that the chat owns (rooms, history) are
//! passed in when rendering rather than mirrored here.

use std::fmt::Write;

/// Monotonic counters, bumped by the reactor.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub connections_total: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub rate_limited: u64,
    pub slow_consumers: u64,
    pub handshake_failures: u64,
    pub handshake_timeouts: u64,
    pub protocol_errors: u64,
    pub idle_timeouts: u64,
    pub rejected_connections: u64,
    pub accept_errors: u64,
    pub http_requests: u64,
    /// Reads cut short by the per-turn read budget (the connection was read again next turn).
    pub reads_deferred: u64,
    /// Connections that stopped being read because their own output was over budget.
    pub reads_paused: u64,
    /// Pings answered by a later ping's pong (RFC 6455 §5.5.3).
    pub pongs_coalesced: u64,
    /// Requests and refreshes refused for their credentials (401, 403, 409, `bad_token`).
    pub auth_refused: u64,
    /// Connections closed because their token expired without a refresh.
    pub auth_expired: u64,
    /// WebSockets that negotiated permessage-deflate (RFC 7692).
    pub deflate_negotiated: u64,
    /// Message bytes given to the compressor (once per broadcast, not per recipient).
    pub deflate_bytes_in: u64,
    /// Compressed bytes it produced, for the messages sent compressed.
    pub deflate_bytes_out: u64,
    /// Messages sent uncompressed to a deflate peer because compressing did not pay (under
    /// `--deflate-min-bytes`, or no smaller once compressed).
    pub deflate_skipped: u64,
    /// Compressed bytes received and inflated.
    pub inflate_bytes_in: u64,
    /// Bytes they inflated to.
    pub inflate_bytes_out: u64,
}

/// The transport's gauges, read from the reactor at render time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Transport {
    pub connections_active: usize,
    pub websockets_active: usize,
    pub outbound_bytes_pending: usize,
    /// Connections not being read until their output drains.
    pub connections_paused: usize,
}

/// Values that are read, not counted, at render time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub connections_active: usize,
    pub websockets_active: usize,
    pub rooms_active: usize,
    pub history_messages: usize,
    /// Bytes every history holds, as counted against `--history-max-bytes`.
    pub history_bytes: usize,
    /// Messages dropped before their time to stay within `--history-max-bytes`.
    pub history_dropped: u64,
    pub messages_expired: u64,
    pub rate_limited: u64,
    /// `typing` signals relayed, and dropped for coming too often.
    pub typing: u64,
    pub typing_limited: u64,
    pub uptime_s: u64,
    pub outbound_bytes_pending: usize,
    pub connections_paused: usize,
    pub redis_up: Option<bool>,
}

impl Metrics {
    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        };
        metric(
            "wisp_connections_active",
            "gauge",
            "Open TCP connections (HTTP and WebSocket).",
            g.connections_active.to_string(),
        );
        metric(
            "wisp_websockets_active",
            "gauge",
            "Open WebSocket connections.",
            g.websockets_active.to_string(),
        );
        metric(
            "wisp_connections_total",
            "counter",
            "Connections accepted since start.",
            self.connections_total.to_string(),
        );
        metric(
            "wisp_connections_rejected_total",
            "counter",
            "Connections refused with 503 (connection limits).",
            self.rejected_connections.to_string(),
        );
        metric(
            "wisp_accept_errors_total",
            "counter",
            "accept() failures (e.g. EMFILE).",
            self.accept_errors.to_string(),
        );
        metric(
            "wisp_http_requests_total",
            "counter",
            "Plain HTTP requests answered.",
            self.http_requests.to_string(),
        );
        metric(
            "wisp_messages_received_total",
            "counter",
            "WebSocket data messages received.",
            self.messages_received.to_string(),
        );
        metric(
            "wisp_messages_sent_total",
            "counter",
            "WebSocket frames queued to each recipient.",
            self.messages_sent.to_string(),
        );
        metric(
            "wisp_bytes_received_total",
            "counter",
            "Bytes read from sockets.",
            self.bytes_received.to_string(),
        );
        metric(
            "wisp_bytes_sent_total",
            "counter",
            "Bytes written to sockets.",
            self.bytes_sent.to_string(),
        );
        metric(
            "wisp_history_messages",
            "gauge",
            "Unexpired messages held in history.",
            g.history_messages.to_string(),
        );
        metric(
            "wisp_history_bytes",
            "gauge",
            "Bytes held by every history, as counted against --history-max-bytes.",
            g.history_bytes.to_string(),
        );
        metric(
            "wisp_history_dropped_total",
            "counter",
            "Messages dropped before their TTL to stay within --history-max-bytes.",
            g.history_dropped.to_string(),
        );
        metric(
            "wisp_rooms_active",
            "gauge",
            "Rooms with members or unexpired messages.",
            g.rooms_active.to_string(),
        );
        metric(
            "wisp_messages_expired_total",
            "counter",
            "Messages removed at the end of their TTL.",
            g.messages_expired.to_string(),
        );
        metric(
            "wisp_rate_limited_total",
            "counter",
            "Chat messages dropped by the rate limit.",
            (g.rate_limited + self.rate_limited).to_string(),
        );
        metric(
            "wisp_auth_refused_total",
            "counter",
            "Requests and token refreshes refused for their credentials.",
            self.auth_refused.to_string(),
        );
        metric(
            "wisp_auth_expired_total",
            "counter",
            "Connections closed with 4001 because their token expired.",
            self.auth_expired.to_string(),
        );
        metric(
            "wisp_typing_total",
            "counter",
            "Typing signals relayed to a room (never stored).",
            g.typing.to_string(),
        );
        metric(
            "wisp_typing_limited_total",
            "counter",
            "Typing signals dropped: more than one per 2 s from a member.",
            g.typing_limited.to_string(),
        );
        metric(
            "wisp_slow_consumers_total",
            "counter",
            "Peers closed with 1008 for unread output.",
            self.slow_consumers.to_string(),
        );
        metric(
            "wisp_outbound_bytes_pending",
            "gauge",
            "Bytes queued for peers that have not read them yet.",
            g.outbound_bytes_pending.to_string(),
        );
        metric(
            "wisp_connections_paused",
            "gauge",
            "Connections not read until their own pending output drains (output budget).",
            g.connections_paused.to_string(),
        );
        metric(
            "wisp_reads_paused_total",
            "counter",
            "Times a connection stopped being read because its pending output passed half of --max-outbound-bytes.",
            self.reads_paused.to_string(),
        );
        metric(
            "wisp_reads_deferred_total",
            "counter",
            "Reads cut short by the per-turn read budget (64 KiB per connection per turn).",
            self.reads_deferred.to_string(),
        );
        metric(
            "wisp_pongs_coalesced_total",
            "counter",
            "Pings left unanswered because a later ping in the same read was answered.",
            self.pongs_coalesced.to_string(),
        );
        metric(
            "wisp_deflate_negotiated_total",
            "counter",
            "WebSockets that negotiated permessage-deflate.",
            self.deflate_negotiated.to_string(),
        );
        metric(
            "wisp_deflate_bytes_in_total",
            "counter",
            "Message bytes compressed (once per broadcast, whatever the number of recipients).",
            self.deflate_bytes_in.to_string(),
        );
        metric(
            "wisp_deflate_bytes_out_total",
            "counter",
            "Compressed bytes produced from them.",
            self.deflate_bytes_out.to_string(),
        );
        metric(
            "wisp_deflate_skipped_total",
            "counter",
            "Messages sent uncompressed to a deflate peer: too small, or no smaller compressed.",
            self.deflate_skipped.to_string(),
        );
        metric(
            "wisp_inflate_bytes_in_total",
            "counter",
            "Compressed message bytes received.",
            self.inflate_bytes_in.to_string(),
        );
        metric(
            "wisp_inflate_bytes_out_total",
            "counter",
            "Bytes those messages inflated to.",
            self.inflate_bytes_out.to_string(),
        );
        metric(
            "wisp_handshake_failures_total",
            "counter",
            "Requests refused or timed out before completing (4xx, slowloris).",
            self.handshake_failures.to_string(),
        );
        metric(
            "wisp_handshake_timeouts_total",
            "counter",
            "Connections closed by --handshake-timeout.",
            self.handshake_timeouts.to_string(),
        );
        metric(
            "wisp_protocol_errors_total",
            "counter",
            "Connections failed for an RFC 6455 violation (1002, 1003, 1007, 1009).",
            self.protocol_errors.to_string(),
        );
        metric(
            "wisp_idle_timeouts_total",
            "counter",
            "Peers dropped by --idle-timeout.",
            self.idle_timeouts.to_string(),
        );
        metric(
            "wisp_uptime_seconds",
            "gauge",
            "Seconds since start.",
            g.uptime_s.to_string(),
        );
        if let Some(up) = g.redis_up {
            metric(
                "wisp_redis_up",
                "gauge",
                "1 when the cluster bridge is connected to Redis.",
                u8::from(up).to_string(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_spec_metric_once_with_type() {
        let m = Metrics {
            messages_sent: 7,
            ..Default::default()
        };
        let text = m.render(&Gauges {
            rooms_active: 2,
            history_bytes: 4096,
            history_dropped: 3,
            ..Default::default()
        });
        for name in [
            "wisp_connections_active",
            "wisp_connections_total",
            "wisp_messages_received_total",
            "wisp_messages_sent_total",
            "wisp_bytes_received_total",
            "wisp_bytes_sent_total",
            "wisp_history_messages",
            "wisp_history_bytes",
            "wisp_history_dropped_total",
            "wisp_rooms_active",
            "wisp_messages_expired_total",
            "wisp_rate_limited_total",
            "wisp_slow_consumers_total",
            "wisp_handshake_failures_total",
            "wisp_protocol_errors_total",
        ] {
            assert_eq!(
                text.matches(&format!("\n{name} ")).count()
                    + usize::from(text.starts_with(&format!("{name} "))),
                1,
                "{name}"
            );
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
        assert!(text.contains("\nwisp_messages_sent_total 7\n"));
        assert!(text.contains("\nwisp_rooms_active 2\n"));
        assert!(text.contains("\nwisp_history_bytes 4096\n"));
        assert!(text.contains("\nwisp_history_dropped_total 3\n"));
    }
}
