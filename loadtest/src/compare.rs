//! `wisp-loadtest compare DIR`: the table across servers.
//!
//! Reads `DIR/<scenario>/<server>.json` (as `compare.sh` writes them), and for
//! each scenario prints and writes (`DIR/summary.md`) the server CPU per unit
//! of work and the p99 latency of every server, with ratios to the floor
//! (`floor.json`) and to the best peer (the lowest value among the servers
//! other than the floor and Wisp's own: `wisp` and any `wisp-*`, such as
//! `wisp-base` or `wisp-deflate`), the bytes the generator read per unit of
//! work, and draws every server's latency CDF on one chart
//! (`DIR/<scenario>/cdf.svg`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::report::Report;
use crate::svg;

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// The directory compare.sh wrote to.
    pub dir: PathBuf,
    /// The server under test; it and every `SUBJECT-*` (other builds or
    /// settings of it) are excluded from "best peer".
    #[arg(long, default_value = "wisp")]
    pub subject: String,
    /// The lower-bound server.
    #[arg(long, default_value = "floor")]
    pub floor: String,
}

fn load(dir: &Path) -> Result<Vec<(String, Vec<Report>)>, String> {
    let mut scenarios = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    entries.sort();
    for sub in entries {
        let mut reports = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&sub)
            .map_err(|e| format!("{}: {e}", sub.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            let mut r: Report =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
            // The file name is the server's name, whatever --label said.
            r.label = f
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            reports.push(r);
        }
        if !reports.is_empty() {
            let name = sub
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            scenarios.push((name, reports));
        }
    }
    Ok(scenarios)
}

/// Whether `label` is the subject or another variant of it (`wisp-deflate`).
fn ours(label: &str, subject: &str) -> bool {
    label == subject
        || label
            .strip_prefix(subject)
            .is_some_and(|rest| rest.starts_with('-'))
}

fn order(label: &str, subject: &str, floor: &str) -> (u8, String) {
    let rank = if label == subject {
        0
    } else if ours(label, subject) {
        1
    } else if label == floor {
        2
    } else {
        3
    };
    (rank, label.to_string())
}

fn fmt_ratio(v: Option<f64>, base: Option<f64>) -> String {
    match (v, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}×", v / b),
        _ => "—".into(),
    }
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("—".into(), |v| format!("{v:.digits$}"))
}

/// The figure a scenario is judged by, lower is better.
fn key_metric(r: &Report) -> Option<f64> {
    if r.scenario == "idle" {
        r.server.bytes_per_conn
    } else {
        r.server.cpu_us_per_op
    }
}

/// The latency a scenario is judged by: message latency, or the
/// handshake's where no message was timed (storm).
fn lat(r: &Report) -> &crate::report::Latency {
    if r.latency.count == 0 && r.scenario == "storm" {
        &r.handshake_latency
    } else {
        &r.latency
    }
}

fn p99(r: &Report) -> Option<f64> {
    let l = lat(r);
    (l.count > 0).then_some(l.p99_us)
}

pub fn run(a: &CompareArgs) -> Result<(), String> {
    let scenarios = load(&a.dir)?;
    if scenarios.is_empty() {
        return Err(format!(
            "no <scenario>/<server>.json under {}",
            a.dir.display()
        ));
    }
    let mut md = String::new();
    for (name, mut reports) in scenarios {
        reports.sort_by_key(|r| order(&r.label, &a.subject, &a.floor));
        let floor = reports.iter().find(|r| r.label == a.floor);
        let peers = || {
            reports
                .iter()
                .filter(|r| r.label != a.floor && !ours(&r.label, &a.subject))
        };
        let best = |f: &dyn Fn(&Report) -> Option<f64>| {
            peers()
                .filter_map(f)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))))
        };
        let floor_key = floor.and_then(key_metric);
        let floor_p99 = floor.and_then(p99);
        let best_key = best(&key_metric);
        let best_p99 = best(&p99);
        let first = &reports[0];
        let params: Vec<String> = first
            .params
            .iter()
            .filter(|(k, _)| *k != "raw" && *k != "deflate")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(
            md,
            "### {name}\n\n`{}` {}\n",
            first.scenario,
            params.join(" ")
        );
        if first.scenario == "idle" {
            let _ = writeln!(
                md,
                "| server | connections | handshakes/s | server RSS bytes/conn | × floor | × best peer |\n|---|---:|---:|---:|---:|---:|"
            );
            for r in &reports {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} |",
                    r.label,
                    r.connections_opened,
                    fmt(r.handshakes_per_s, 0),
                    fmt(r.server.bytes_per_conn, 0),
                    fmt_ratio(key_metric(r), floor_key),
                    fmt_ratio(key_metric(r), best_key),
                );
            }
        } else {
            let per = &first.per;
            let pers = crate::report::plural(per);
            let _ = writeln!(
                md,
                "| server | {pers}/s | server CPU µs/{per} | × floor | × best peer | CPU share | wire B/{per} | p50 µs | p99 µs | p99.9 µs | max µs | p99 × floor | p99 × best peer | lost |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for r in &reports {
                let l = lat(r);
                let has = l.count > 0;
                let _ = writeln!(
                    md,
                    "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.label,
                    r.ops_per_s,
                    fmt(r.server.cpu_us_per_op, 3),
                    fmt_ratio(key_metric(r), floor_key),
                    fmt_ratio(key_metric(r), best_key),
                    r.server
                        .cpu_share
                        .map_or("—".into(), |s| format!("{:.0}%", s * 100.0)),
                    fmt(r.wire_bytes_per_op, 1),
                    fmt(has.then_some(l.p50_us), 0),
                    fmt(p99(r), 0),
                    fmt(has.then_some(l.p999_us), 0),
                    fmt(has.then_some(l.max_us), 0),
                    fmt_ratio(p99(r), floor_p99),
                    fmt_ratio(p99(r), best_p99),
                    if r.expected > 0 {
                        format!("{}/{}", r.lost, r.expected)
                    } else {
                        "—".into()
                    },
                );
            }
            if first.scenario == "storm" {
                let _ = writeln!(
                    md,
                    "\nLatency columns: connect to 101 (the handshake), at --concurrency in flight."
                );
            }
            let series: Vec<svg::Series<'_>> = reports
                .iter()
                .map(|r| svg::Series {
                    name: &r.label,
                    points: &lat(r).cdf,
                })
                .collect();
            if reports.iter().any(|r| lat(r).count > 0) {
                let chart = svg::cdf_chart(&format!("{name}: latency CDF"), &series);
                let path = a.dir.join(&name).join("cdf.svg");
                std::fs::write(&path, chart).map_err(|e| format!("{}: {e}", path.display()))?;
                let _ = writeln!(md, "\nCDF: `{}`", path.display());
            }
        }
        let gen: Vec<String> = reports
            .iter()
            .filter_map(|r| Some(format!("{} {:.0}%", r.label, r.client_cpu_share? * 100.0)))
            .collect();
        if !gen.is_empty() {
            let _ = writeln!(md, "\nGenerator CPU (one core): {}.", gen.join(", "));
        }
        for r in &reports {
            if r.params.get("deflate") == Some(&serde_json::Value::Bool(true)) {
                let _ = writeln!(
                    md,
                    "\n- {}: deflate offered, negotiated on {} of {} connections; {} messages arrived compressed, {} bytes inflated to {} ({:.0}%)",
                    r.label,
                    r.deflate_connections,
                    r.connections_opened,
                    r.inflated_messages,
                    r.inflated_from,
                    r.inflated_to,
                    100.0 * r.inflated_from as f64 / r.inflated_to.max(1) as f64
                );
            }
            for n in &r.notes {
                let _ = writeln!(md, "\n- {}: {n}", r.label);
            }
            if !r.failures.is_empty() {
                let f: Vec<String> = r
                    .failures
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect();
                let _ = writeln!(md, "\n- {} failures: {}", r.label, f.join(", "));
            }
        }
        md.push('\n');
    }
    print!("{md}");
    let path = a.dir.join("summary.md");
    std::fs::write(&path, &md).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
