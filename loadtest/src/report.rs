//! What a run measured: the raw tally each process keeps (mergeable across
//! `--procs` shards), and the report computed from it (printed as a table,
//! written as JSON, plotted as a latency CDF).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A latency histogram in nanoseconds, 3 significant digits, up to 100 s.
///
/// Serialized as `[[value, count], ...]` of its recorded buckets so shards can
/// ship theirs to the parent without losing precision.
#[derive(Debug, Clone)]
pub struct Hist(pub Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("bug: valid bounds"))
    }
}

impl Hist {
    pub fn record(&mut self, ns: u64) {
        self.0.saturating_record(ns.max(1));
    }
    pub fn merge(&mut self, other: &Hist) {
        self.0
            .add(&other.0)
            .expect("bug: histograms share their bounds");
    }
}

impl Serialize for Hist {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let buckets: Vec<[u64; 2]> = self
            .0
            .iter_recorded()
            .map(|v| [v.value_iterated_to(), v.count_at_value()])
            .collect();
        buckets.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let buckets: Vec<[u64; 2]> = Vec::deserialize(d)?;
        let mut h = Hist::default();
        for [v, n] in buckets {
            h.0.saturating_record_n(v, n);
        }
        Ok(h)
    }
}

/// Everything one process counted; shards' tallies are merged by the parent.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Tally {
    /// Connections whose upgrade succeeded.
    pub opened: u64,
    /// Connections that failed or were closed by the server, by reason.
    pub failures: BTreeMap<String, u64>,
    /// Close handshakes completed (storm).
    pub closed: u64,
    /// First `connect` and last 101 of the connection phase (monotonic ns).
    pub connect_start_ns: u64,
    pub connect_end_ns: u64,
    /// From `connect` to the server's 101, per connection.
    pub handshake: Hist,
    /// The measured window (monotonic ns): sending starts, draining ends.
    pub run_start_ns: u64,
    pub run_end_ns: u64,
    /// Messages sent by this process, per group (room; one group for
    /// fan-out; per connection for echo it is just the total in group 0).
    pub sent_per_group: Vec<u64>,
    /// Matching messages received, and their latency from the send
    /// timestamp they carry to their arrival.
    pub delivered: u64,
    pub latency: Hist,
    /// The same, per node (`--url`, then each `--also-url`) of the
    /// recipient; empty with a single node.
    #[serde(default)]
    pub latency_by_node: Vec<Hist>,
    /// (global connection index, group, messages received) per receiver.
    pub receivers: Vec<[u64; 3]>,
    /// Frames that were not our messages (welcome, join, leave, ...).
    pub other_frames: u64,
    pub welcomes: u64,
    /// Largest delay between a message's scheduled and actual send time.
    pub max_send_lag_ns: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Bytes read from the sockets during the measured window, frame headers
    /// included: what the server put on the wire for the window's work.
    #[serde(default)]
    pub wire_in: u64,
    /// Messages that arrived compressed during the window, and their payload
    /// bytes before and after inflating.
    #[serde(default)]
    pub inflated: u64,
    #[serde(default)]
    pub inflated_from: u64,
    #[serde(default)]
    pub inflated_to: u64,
    /// Connections whose upgrade accepted our permessage-deflate offer.
    #[serde(default)]
    pub deflate_conns: u64,
    /// This process's own CPU over the window (inflating costs the
    /// generator too: if it saturates its core, latency is its own).
    #[serde(default)]
    pub client_cpu_us: u64,
    /// The server's highest RSS sampled during the window (hostile).
    #[serde(default)]
    pub rss_peak: Option<u64>,
    /// What the attacker did (hostile).
    #[serde(default)]
    pub attack: Option<crate::attack::AttackReport>,
}

fn merge_ns_min(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (x, y) => x.min(y),
    }
}

impl Tally {
    pub fn fail(&mut self, why: String) {
        *self.failures.entry(why).or_default() += 1;
    }

    pub fn merge(&mut self, o: &Tally) {
        self.opened += o.opened;
        for (k, v) in &o.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        self.closed += o.closed;
        self.connect_start_ns = merge_ns_min(self.connect_start_ns, o.connect_start_ns);
        self.connect_end_ns = self.connect_end_ns.max(o.connect_end_ns);
        self.handshake.merge(&o.handshake);
        self.run_start_ns = merge_ns_min(self.run_start_ns, o.run_start_ns);
        self.run_end_ns = self.run_end_ns.max(o.run_end_ns);
        if self.sent_per_group.len() < o.sent_per_group.len() {
            self.sent_per_group.resize(o.sent_per_group.len(), 0);
        }
        for (i, s) in o.sent_per_group.iter().enumerate() {
            self.sent_per_group[i] += s;
        }
        self.delivered += o.delivered;
        self.latency.merge(&o.latency);
        if self.latency_by_node.len() < o.latency_by_node.len() {
            self.latency_by_node
                .resize(o.latency_by_node.len(), Hist::default());
        }
        for (h, o) in self.latency_by_node.iter_mut().zip(&o.latency_by_node) {
            h.merge(o);
        }
        self.receivers.extend_from_slice(&o.receivers);
        self.other_frames += o.other_frames;
        self.welcomes += o.welcomes;
        self.max_send_lag_ns = self.max_send_lag_ns.max(o.max_send_lag_ns);
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.wire_in += o.wire_in;
        self.inflated += o.inflated;
        self.inflated_from += o.inflated_from;
        self.inflated_to += o.inflated_to;
        self.deflate_conns += o.deflate_conns;
        self.client_cpu_us += o.client_cpu_us;
        self.rss_peak = self.rss_peak.max(o.rss_peak);
        if self.attack.is_none() {
            self.attack.clone_from(&o.attack);
        }
    }
}

/// Latency summary in microseconds.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// `[latency_us, cumulative fraction]` points of the CDF.
    pub cdf: Vec<[f64; 2]>,
}

impl Latency {
    pub fn from_hist(h: &Hist) -> Latency {
        let h = &h.0;
        if h.is_empty() {
            return Latency::default();
        }
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        // Dense near the tail: 0..0.9 in 1% steps, then 9s of nines.
        let mut qs: Vec<f64> = (0..90).map(|i| i as f64 / 100.0).collect();
        let mut k = 1.0;
        while k <= 6.0 {
            qs.push(1.0 - 10f64.powf(-k));
            k += 0.05;
        }
        qs.push(1.0);
        let mut cdf: Vec<[f64; 2]> = qs.iter().map(|&q| [us(q), q]).collect();
        cdf.dedup_by(|a, b| a[0] == b[0] && a[1] == b[1]);
        Latency {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: h.max() as f64 / 1000.0,
            cdf,
        }
    }
}

/// The server's side of the measured window.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ServerSide {
    pub pid: u32,
    /// CPU (user + system) over the measured window.
    pub cpu_us: Option<u64>,
    /// `cpu_us` divided by the scenario's unit of work (`per`).
    pub cpu_us_per_op: Option<f64>,
    /// Share of one core over the window.
    pub cpu_share: Option<f64>,
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
    /// The highest RSS sampled (every 50 ms) during the window (hostile).
    #[serde(default)]
    pub rss_peak: Option<u64>,
    /// (rss_after - rss_before) / connections open (idle).
    pub bytes_per_conn: Option<f64>,
}

/// One scenario's result, as written to JSON.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    /// Which server was driven (`--label`).
    pub label: String,
    pub url: String,
    pub params: BTreeMap<String, serde_json::Value>,
    pub procs: usize,
    pub sources: usize,
    /// What `ops` and `cpu_us_per_op` count: delivery, message, handshake.
    pub per: String,
    pub connections_opened: u64,
    pub failures: BTreeMap<String, u64>,
    pub handshakes_per_s: Option<f64>,
    pub handshake_latency: Latency,
    pub window_s: f64,
    pub sent: u64,
    pub ops: u64,
    pub ops_per_s: f64,
    pub expected: u64,
    pub lost: u64,
    pub receivers_with_loss: u64,
    pub max_lost_per_receiver: u64,
    pub other_frames: u64,
    pub welcomes: u64,
    pub max_send_lag_ms: f64,
    pub latency: Latency,
    /// Latency at the recipients on each node (`--url`, then each
    /// `--also-url`); empty with a single node.
    #[serde(default)]
    pub latency_by_node: Vec<Latency>,
    pub server: ServerSide,
    /// CPU of the `--also-pid` processes (other cluster nodes, Redis) over
    /// the same window.
    #[serde(default)]
    pub also: Vec<ServerSide>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Bytes the generator read during the measured window (frames with
    /// their headers: the server's output on the wire), and that divided by
    /// `ops`.
    #[serde(default)]
    pub wire_bytes_in: u64,
    #[serde(default)]
    pub wire_bytes_per_op: Option<f64>,
    /// permessage-deflate: connections that negotiated it, and the messages
    /// that arrived compressed in the window with their bytes before and
    /// after inflating.
    #[serde(default)]
    pub deflate_connections: u64,
    #[serde(default)]
    pub inflated_messages: u64,
    #[serde(default)]
    pub inflated_from: u64,
    #[serde(default)]
    pub inflated_to: u64,
    /// The generator's CPU over the window (all its processes), as a share
    /// of one core.
    #[serde(default)]
    pub client_cpu_share: Option<f64>,
    /// Notes on the run (generator fell behind, loss, ...).
    pub notes: Vec<String>,
    /// What the attacker did (hostile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack: Option<crate::attack::AttackReport>,
}

impl Report {
    /// The common part computed from a merged tally. `ops` is what the
    /// scenario counts as its unit of work.
    pub fn from_tally(scenario: &str, t: &Tally, per: &str, ops: u64) -> Report {
        let window_s = (t.run_end_ns.saturating_sub(t.run_start_ns)) as f64 / 1e9;
        let connect_s = (t.connect_end_ns.saturating_sub(t.connect_start_ns)) as f64 / 1e9;
        let mut r = Report {
            scenario: scenario.into(),
            per: per.into(),
            connections_opened: t.opened,
            failures: t.failures.clone(),
            handshakes_per_s: (connect_s > 0.0).then(|| t.opened as f64 / connect_s),
            handshake_latency: Latency::from_hist(&t.handshake),
            window_s,
            sent: t.sent_per_group.iter().sum(),
            ops,
            ops_per_s: if window_s > 0.0 {
                ops as f64 / window_s
            } else {
                0.0
            },
            other_frames: t.other_frames,
            welcomes: t.welcomes,
            max_send_lag_ms: t.max_send_lag_ns as f64 / 1e6,
            latency: Latency::from_hist(&t.latency),
            latency_by_node: t.latency_by_node.iter().map(Latency::from_hist).collect(),
            bytes_in: t.bytes_in,
            bytes_out: t.bytes_out,
            wire_bytes_in: t.wire_in,
            wire_bytes_per_op: (ops > 0 && t.wire_in > 0).then(|| t.wire_in as f64 / ops as f64),
            deflate_connections: t.deflate_conns,
            inflated_messages: t.inflated,
            inflated_from: t.inflated_from,
            inflated_to: t.inflated_to,
            client_cpu_share: (window_s > 0.0 && t.client_cpu_us > 0)
                .then(|| t.client_cpu_us as f64 / 1e6 / window_s),
            ..Report::default()
        };
        // Loss: every receiver expects every message sent to its group.
        for &[_, group, got] in &t.receivers {
            let want = t.sent_per_group.get(group as usize).copied().unwrap_or(0);
            r.expected += want;
            let lost = want.saturating_sub(got);
            r.lost += lost;
            if lost > 0 {
                r.receivers_with_loss += 1;
            }
            r.max_lost_per_receiver = r.max_lost_per_receiver.max(lost);
        }
        if r.max_send_lag_ms > 100.0 {
            r.notes.push(format!(
                "the generator sent up to {:.0} ms behind schedule: offered load lower than asked",
                r.max_send_lag_ms
            ));
        }
        if r.lost > 0 {
            r.notes.push(format!(
                "{} of {} expected deliveries missing ({} receivers)",
                r.lost, r.expected, r.receivers_with_loss
            ));
        }
        r
    }

    /// Fills the server's CPU figures for the window.
    pub fn set_cpu(&mut self, pid: u32, cpu_us: Option<u64>) {
        self.server.pid = pid;
        self.server.cpu_us = cpu_us;
        if let Some(cpu) = cpu_us {
            if self.ops > 0 {
                self.server.cpu_us_per_op = Some(cpu as f64 / self.ops as f64);
            }
            if self.window_s > 0.0 {
                self.server.cpu_share = Some(cpu as f64 / 1e6 / self.window_s);
            }
        }
    }

    /// Adds one `--also-pid` process's CPU over the window.
    pub fn add_also_cpu(&mut self, pid: u32, cpu_us: Option<u64>) {
        let mut s = ServerSide {
            pid,
            cpu_us,
            ..ServerSide::default()
        };
        if let Some(cpu) = cpu_us {
            if self.ops > 0 {
                s.cpu_us_per_op = Some(cpu as f64 / self.ops as f64);
            }
            if self.window_s > 0.0 {
                s.cpu_share = Some(cpu as f64 / 1e6 / self.window_s);
            }
        }
        self.also.push(s);
    }

    /// The human summary: a two-column table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_string(), v));
        row("scenario", format!("{} ({})", self.scenario, self.label));
        row("url", self.url.clone());
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        row("params", params.join(" "));
        row(
            "connections",
            format!(
                "{} opened ({} procs, {} source addresses)",
                self.connections_opened, self.procs, self.sources
            ),
        );
        if let Some(h) = self.handshakes_per_s {
            row(
                "handshakes",
                format!(
                    "{:.0}/s, latency p50 {:.0} µs p99 {:.0} µs max {:.0} µs",
                    h,
                    self.handshake_latency.p50_us,
                    self.handshake_latency.p99_us,
                    self.handshake_latency.max_us
                ),
            );
        }
        if !self.failures.is_empty() {
            let f: Vec<String> = self
                .failures
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            row("failures", f.join(", "));
        }
        row("window", format!("{:.2} s", self.window_s));
        if self.sent > 0 {
            row("sent", format!("{}", self.sent));
        }
        if self.ops > 0 {
            row(
                &plural(&self.per),
                format!("{} ({:.0}/s)", self.ops, self.ops_per_s),
            );
        }
        if self.expected > 0 {
            row(
                "lost",
                format!(
                    "{} of {} ({} receivers, at most {} each)",
                    self.lost, self.expected, self.receivers_with_loss, self.max_lost_per_receiver
                ),
            );
        }
        if self.latency.count > 0 {
            let l = &self.latency;
            row(
                "latency µs",
                format!(
                    "p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  (n={})",
                    l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.count
                ),
            );
        }
        for (i, l) in self.latency_by_node.iter().enumerate() {
            row(
                &format!("latency µs node {i}"),
                format!(
                    "p50 {:.0}  p99 {:.0}  max {:.0}  (n={})",
                    l.p50_us, l.p99_us, l.max_us, l.count
                ),
            );
        }
        if let Some(c) = self.server.cpu_us_per_op {
            row(
                &format!("server CPU / {}", self.per),
                format!(
                    "{:.3} µs  ({:.2} s CPU, {:.0}% of a core)",
                    c,
                    self.server.cpu_us.unwrap_or(0) as f64 / 1e6,
                    self.server.cpu_share.unwrap_or(0.0) * 100.0
                ),
            );
        }
        if let (None, Some(cpu)) = (self.server.cpu_us_per_op, self.server.cpu_us) {
            row(
                "server CPU",
                format!(
                    "{:.2} s ({:.1}% of a core)",
                    cpu as f64 / 1e6,
                    self.server.cpu_share.unwrap_or(0.0) * 100.0
                ),
            );
        }
        for s in &self.also {
            row(
                &format!("CPU of pid {}", s.pid),
                match s.cpu_us {
                    Some(cpu) => format!(
                        "{:.2} s ({:.0}% of a core, {:.3} µs / {})",
                        cpu as f64 / 1e6,
                        s.cpu_share.unwrap_or(0.0) * 100.0,
                        s.cpu_us_per_op.unwrap_or(0.0),
                        self.per
                    ),
                    None => "unreadable".into(),
                },
            );
        }
        if let Some(c) = self.client_cpu_share {
            row("generator CPU", format!("{:.0}% of a core", c * 100.0));
        }
        if let Some(b) = self.wire_bytes_per_op {
            row(
                &format!("wire bytes / {}", self.per),
                format!(
                    "{b:.1}  ({:.1} MB received in the window, frame headers included)",
                    self.wire_bytes_in as f64 / 1e6
                ),
            );
        }
        if self.params.get("deflate") == Some(&serde_json::Value::Bool(true)) {
            row(
                "deflate",
                format!(
                    "negotiated on {} of {} connections; {} messages arrived compressed, {} -> {} bytes ({:.0}%)",
                    self.deflate_connections,
                    self.connections_opened,
                    self.inflated_messages,
                    self.inflated_from,
                    self.inflated_to,
                    100.0 * self.inflated_from as f64 / self.inflated_to.max(1) as f64
                ),
            );
        }
        if let (Some(b), Some(a)) = (self.server.rss_before, self.server.rss_after) {
            row(
                "server RSS",
                format!("{:.1} MiB -> {:.1} MiB", mib(b), mib(a)),
            );
        }
        if let Some(p) = self.server.rss_peak {
            row("server RSS peak", format!("{:.1} MiB", mib(p)));
        }
        if let Some(a) = &self.attack {
            row("attack", a.line());
        }
        if let Some(b) = self.server.bytes_per_conn {
            row("server bytes/conn", format!("{b:.0}"));
        }
        if self.other_frames > 0 {
            row(
                "other frames",
                format!("{} ({} welcome)", self.other_frames, self.welcomes),
            );
        }
        for n in &self.notes {
            row("note", n.clone());
        }
        let w = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut s = String::new();
        for (k, v) in rows {
            s.push_str(&format!("  {k:<w$}  {v}\n"));
        }
        s
    }
}

/// `delivery` -> `deliveries`, `message` -> `messages`.
pub fn plural(word: &str) -> String {
    match word.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{word}s"),
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hist_round_trips_through_json() {
        let mut h = Hist::default();
        for v in [1_000, 2_000, 50_000, 1_000_000, 7] {
            h.record(v);
        }
        let json = serde_json::to_string(&h).unwrap();
        let back: Hist = serde_json::from_str(&json).unwrap();
        assert_eq!(back.0.len(), 5);
        assert_eq!(back.0.max(), h.0.max());
        assert_eq!(back.0.value_at_quantile(0.5), h.0.value_at_quantile(0.5));
    }

    #[test]
    fn loss_counts_per_receiver_against_its_group() {
        let mut t = Tally {
            sent_per_group: vec![10, 4],
            receivers: vec![[0, 0, 10], [1, 0, 7], [2, 1, 4], [3, 1, 0]],
            ..Tally::default()
        };
        let mut other = Tally {
            sent_per_group: vec![0, 1],
            ..Tally::default()
        };
        other.receivers.push([4, 1, 5]);
        t.merge(&other);
        let r = Report::from_tally("x", &t, "delivery", 0);
        assert_eq!(r.expected, 10 + 10 + 5 + 5 + 5);
        assert_eq!(r.lost, 3 + 1 + 5);
        assert_eq!(r.receivers_with_loss, 3);
        assert_eq!(r.max_lost_per_receiver, 5);
    }
}
