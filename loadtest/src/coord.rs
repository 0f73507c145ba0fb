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
//! The child's side of the protocol is [`Ctx`]'s, in `ctx`.

use std::io::{self, BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::ctx::{also_cpu, cpu_deltas, Ctx, Window};
use crate::report::{Report, Tally};
use crate::scenarios;
use crate::svg;
use crate::sys::{self, Probe};
use crate::{Cmd, Common};

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
    let is_child = ctx.is_child();
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
