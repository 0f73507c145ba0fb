//! Running a scenario in this process, or over `--procs N` processes.
//!
//! With `--procs N` the parent re-executes this binary N times with
//! `--shard I` (and a shared `--nonce`); shard I owns the connections whose
//! global index is I modulo N. The protocol on each child's stdin/stdout is
//! one line each way per step:
//!
//! ```text
//! child  -> READY            all its connections are open and settled
//! parent -> GO               (parent sampled the server's RSS and CPU)
//! child  -> RESULT {json}    its tally, after sending and draining
//! parent -> EXIT             (parent sampled the server's CPU again)
//! ```
//!
//! so the server is sampled once for the whole run, and no child closes its
//! connections (which costs the server work) before every child is done.

use std::io::{self, BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::report::{Report, Tally};
use crate::scenarios;
use crate::svg;
use crate::sys::{self, Probe};
use crate::{Cmd, Common};

/// The server's figures over one measured window.
#[derive(Debug, Default, Clone)]
pub struct Window {
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
    pub cpu_us: Option<u64>,
    /// CPU of each `--also-pid` over the same window.
    pub also_cpu_us: Vec<Option<u64>>,
}

/// What a scenario needs from whoever runs it.
pub struct Ctx {
    pub c: Common,
    pub shard: usize,
    pub shards: usize,
    /// Marks this run's messages and room names, shared by every shard.
    pub nonce: u32,
    pub show_progress: bool,
    child: Option<BufReader<io::Stdin>>,
    probe: Option<Probe>,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
    cpu_start: Option<u64>,
    also_start: Vec<Option<u64>>,
    /// One per measured window (solo only).
    pub windows: Vec<Window>,
}

impl Ctx {
    fn new(c: Common) -> Ctx {
        let probe = c.server_pid.map(|pid| Probe { pid });
        let (shard, shards) = match c.shard {
            Some(i) => (i as usize, c.procs as usize),
            None => (0, 1),
        };
        let nonce = c
            .nonce
            .unwrap_or_else(|| wisp::protocol::client::MaskRng::from_os().next_u64() as u32);
        Ctx {
            show_progress: !c.quiet && shard == 0,
            child: c.shard.map(|_| BufReader::new(io::stdin())),
            rss_before: probe.and_then(|p| p.rss()),
            probe,
            rss_after: None,
            cpu_start: None,
            also_start: Vec::new(),
            windows: Vec::new(),
            shard,
            shards,
            nonce,
            c,
        }
    }

    /// Whether global connection index `g` belongs to this process.
    pub fn mine(&self, g: u64) -> bool {
        g as usize % self.shards == self.shard
    }

    /// Connections are open and settled: the measured window starts.
    pub fn begin_window(&mut self) -> io::Result<()> {
        if let Some(stdin) = self.child.as_mut() {
            println!("READY");
            io::stdout().flush()?;
            expect_line(stdin, "GO")?;
        } else {
            if let Some(p) = self.probe {
                self.rss_after = p.rss();
                self.cpu_start = p.cpu_us();
            }
            self.also_start = also_cpu(&self.c);
        }
        Ok(())
    }

    /// The measured window is over (connections still open).
    pub fn end_window(&mut self, t: &Tally) -> io::Result<()> {
        if let Some(stdin) = self.child.as_mut() {
            let json = serde_json::to_string(t).map_err(io::Error::other)?;
            println!("RESULT {json}");
            io::stdout().flush()?;
            expect_line(stdin, "EXIT")?;
        } else {
            let cpu_us = match (self.probe.and_then(|p| p.cpu_us()), self.cpu_start) {
                (Some(b), Some(a)) => Some(b.saturating_sub(a)),
                _ => None,
            };
            self.windows.push(Window {
                rss_before: self.rss_before,
                rss_after: self.rss_after,
                cpu_us,
                also_cpu_us: cpu_deltas(&self.also_start, &also_cpu(&self.c)),
            });
        }
        Ok(())
    }

    /// Whether to print the progress line now.
    pub fn progress(&self, line: &str) {
        if self.show_progress {
            eprint!("\r{line:<100}");
        }
    }

    pub fn progress_done(&self) {
        if self.show_progress {
            eprint!("\r{:<100}\r", "");
        }
    }
}

/// CPU of each `--also-pid` now.
fn also_cpu(c: &Common) -> Vec<Option<u64>> {
    c.also_pid
        .iter()
        .map(|&pid| Probe { pid }.cpu_us())
        .collect()
}

/// `after - before`, per process, where both were read.
fn cpu_deltas(before: &[Option<u64>], after: &[Option<u64>]) -> Vec<Option<u64>> {
    before
        .iter()
        .zip(after)
        .map(|(a, b)| Some(b.as_ref()?.saturating_sub(*a.as_ref()?)))
        .collect()
}

fn expect_line(r: &mut impl BufRead, want: &str) -> io::Result<()> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.trim() == want {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "expected {want} from the parent, got {line:?}"
        )))
    }
}

/// Runs `cmd`: in this process, as a shard, or as the parent of shards.
pub fn drive(cmd: &Cmd) -> Result<(), String> {
    let mut c = scenarios::common(cmd).clone();
    let limit = sys::raise_nofile_limit();
    let targets = c.targets()?;
    if matches!(cmd, Cmd::Hostile(_)) && c.server_pid.is_none() {
        // The peak RSS is the point of the scenario: find the server.
        c.server_pid = sys::pid_listening_on(targets[0].port());
        if c.server_pid.is_none() {
            eprintln!(
                "wisp-loadtest: no --server-pid and no process found listening on the port: no RSS"
            );
        }
    }
    if !c.also_url.is_empty() && !scenarios::supports_nodes(cmd) {
        return Err("--also-url applies to fanout and rooms".into());
    }
    if c.procs > 1 && c.shard.is_none() {
        if !scenarios::supports_procs(cmd) {
            return Err("--procs applies to idle, fanout and rooms".into());
        }
        return parent(cmd, &c);
    }
    let mut ctx = Ctx::new(c);
    let is_child = ctx.child.is_some();
    let tallies = scenarios::run(cmd, &mut ctx, limit).map_err(|e| e.to_string())?;
    if is_child {
        return Ok(());
    }
    let n = tallies.len();
    for (i, t) in tallies.iter().enumerate() {
        let mut r = scenarios::finalize(cmd, t, i);
        apply(
            &mut r,
            &ctx.c,
            &ctx.windows.get(i).cloned().unwrap_or_default(),
        );
        emit(&r, &ctx.c, (n > 1).then(|| scenarios::phase_suffix(cmd, i)))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn parent(cmd: &Cmd, c: &Common) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let nonce = wisp::protocol::client::MaskRng::from_os().next_u64() as u32;
    let probe = c.server_pid.map(|pid| Probe { pid });
    let rss_before = probe.and_then(|p| p.rss());
    let mut kids: Vec<(Child, ChildStdin, BufReader<ChildStdout>)> = Vec::new();
    for i in 0..c.procs {
        let mut child = Command::new(&exe)
            .args(&args)
            .args(["--shard", &i.to_string(), "--nonce", &nonce.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawning shard {i}: {e}"))?;
        let stdin = child.stdin.take().expect("bug: piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("bug: piped stdout"));
        kids.push((child, stdin, stdout));
    }
    let read = |r: &mut BufReader<ChildStdout>, i: usize| -> Result<String, String> {
        let mut line = String::new();
        r.read_line(&mut line)
            .map_err(|e| format!("shard {i}: {e}"))?;
        if line.is_empty() {
            return Err(format!("shard {i} exited early"));
        }
        Ok(line)
    };
    for (i, (_, _, out)) in kids.iter_mut().enumerate() {
        let line = read(out, i)?;
        if line.trim() != "READY" {
            return Err(format!("shard {i}: expected READY, got {line:?}"));
        }
    }
    let rss_after = probe.and_then(|p| p.rss());
    let cpu0 = probe.and_then(|p| p.cpu_us());
    let also0 = also_cpu(c);
    for (_, input, _) in kids.iter_mut() {
        writeln!(input, "GO").map_err(|e| e.to_string())?;
    }
    let mut merged = Tally::default();
    for (i, (_, _, out)) in kids.iter_mut().enumerate() {
        let line = read(out, i)?;
        let json = line
            .trim()
            .strip_prefix("RESULT ")
            .ok_or_else(|| format!("shard {i}: expected RESULT, got {line:?}"))?;
        let t: Tally = serde_json::from_str(json).map_err(|e| format!("shard {i}: {e}"))?;
        merged.merge(&t);
    }
    let cpu1 = probe.and_then(|p| p.cpu_us());
    let also1 = also_cpu(c);
    for (mut child, mut input, _) in kids {
        let _ = writeln!(input, "EXIT");
        drop(input);
        let _ = child.wait();
    }
    let mut r = scenarios::finalize(cmd, &merged, 0);
    let w = Window {
        rss_before,
        rss_after,
        cpu_us: match (cpu1, cpu0) {
            (Some(b), Some(a)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        also_cpu_us: cpu_deltas(&also0, &also1),
    };
    apply(&mut r, c, &w);
    emit(&r, c, None).map_err(|e| e.to_string())
}

/// Adds what is common to every report: identity and the server's figures.
fn apply(r: &mut Report, c: &Common, w: &Window) {
    r.label = c.label.clone();
    r.url = c.url.clone();
    r.procs = c.procs as usize;
    r.sources = c.sources as usize;
    r.params
        .insert("duration_s".into(), serde_json::json!(c.duration));
    if c.raw {
        r.params.insert("raw".into(), serde_json::json!(true));
    }
    for (&pid, &cpu) in c.also_pid.iter().zip(&w.also_cpu_us) {
        r.add_also_cpu(pid, cpu);
    }
    if let Some(pid) = c.server_pid {
        r.set_cpu(pid, w.cpu_us);
        r.server.rss_before = w.rss_before;
        r.server.rss_after = w.rss_after;
        if let (Some(b), Some(a)) = (w.rss_before, w.rss_after) {
            if r.scenario == "idle" && r.connections_opened > 0 {
                r.server.bytes_per_conn = Some((a as f64 - b as f64) / r.connections_opened as f64);
            }
        }
    }
}

/// Prints the table and writes the JSON and the CDF chart.
fn emit(r: &Report, c: &Common, suffix: Option<String>) -> io::Result<()> {
    let mut path = c
        .json
        .clone()
        .unwrap_or_else(|| c.out.join(format!("{}.json", r.scenario)));
    if let Some(s) = suffix {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        path.set_file_name(format!("{stem}-{s}.json"));
    }
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let json = serde_json::to_string_pretty(r).map_err(io::Error::other)?;
    std::fs::write(&path, json + "\n")?;
    println!("{}", r.table());
    println!("  json: {}", path.display());
    if r.latency.count > 0 {
        let svg_path = path.with_extension("svg");
        let title = format!("{} latency CDF ({})", r.scenario, r.label);
        let chart = svg::cdf_chart(
            &title,
            &[svg::Series {
                name: &r.label,
                points: &r.latency.cdf,
            }],
        );
        std::fs::write(&svg_path, chart)?;
        println!("  svg:  {}", svg_path.display());
    }
    Ok(())
}
