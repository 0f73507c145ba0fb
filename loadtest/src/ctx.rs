//! What a scenario needs from whoever runs it ([`Ctx`]): the options, which
//! connections are this process's, the run's nonce, progress lines, and the
//! measured window.
//!
//! The window is where a scenario meets `coord`'s protocol: as a shard, this
//! process says `READY` and waits for `GO` when its window begins, and prints
//! `RESULT {json}` and waits for `EXIT` when it ends; running alone, it samples
//! the server itself. Which processes run, and what becomes of the figures, is
//! `coord`'s.

use std::io::{self, BufRead, BufReader, Write};

use crate::report::Tally;
use crate::sys::Probe;
use crate::Common;

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
    pub fn new(c: Common) -> Ctx {
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

    /// Whether this process is a shard run by a parent (`--shard I`).
    pub fn is_child(&self) -> bool {
        self.child.is_some()
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
pub fn also_cpu(c: &Common) -> Vec<Option<u64>> {
    c.also_pid
        .iter()
        .map(|&pid| Probe { pid }.cpu_us())
        .collect()
}

/// `after - before`, per process, where both were read.
pub fn cpu_deltas(before: &[Option<u64>], after: &[Option<u64>]) -> Vec<Option<u64>> {
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
