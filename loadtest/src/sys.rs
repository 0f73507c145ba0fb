//! The few things read from the operating system: the monotonic clock shared
//! by every process of a run, and a server's CPU time and memory from `/proc`.

use std::io;

/// Nanoseconds on `CLOCK_MONOTONIC`.
///
/// One clock for every process on the machine, so a timestamp written into a
/// message by one shard can be subtracted from the arrival time in another.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "bug: CLOCK_MONOTONIC is always available on Linux");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Clock ticks per second of `/proc/PID/stat` times.
fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory side effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// User + system CPU time of process `pid`, in microseconds (`/proc/PID/stat`
/// fields 14 and 15; the resolution is one clock tick, usually 10 ms).
pub fn cpu_us(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after it start
    // after its closing parenthesis, at field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc/PID/stat"))?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let get = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc/PID/stat"))
    };
    // Field 14 (utime) is index 11 after field 2; field 15 (stime) index 12.
    let ticks = get(11)? + get(12)?;
    Ok(ticks * 1_000_000 / clock_ticks())
}

/// Resident set size of process `pid` in bytes (`VmRSS` in `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS"))
}

/// The process listening on TCP `port` (any local address), found from the
/// socket's inode in `/proc/net/tcp{,6}` and the `/proc/PID/fd` links; only
/// processes we may inspect (our own user's) are found.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let want = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, state 0A = LISTEN, inode is field 9.
            if f.len() > 9 && f[1].ends_with(&want) && f[3] == "0A" {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| link.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// The soft and hard limits on open files.
pub fn nofile_limit() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return (1024, 1024);
    }
    (lim.rlim_cur, lim.rlim_max)
}

/// Raises the soft open-file limit to the hard one; returns the soft limit now.
pub fn raise_nofile_limit() -> u64 {
    let (cur, max) = nofile_limit();
    if cur < max {
        let raised = libc::rlimit {
            rlim_cur: max,
            rlim_max: max,
        };
        // SAFETY: `raised` is a valid rlimit struct read by the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return max;
        }
    }
    cur
}

/// A server process watched over the measured window.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub pid: u32,
}

impl Probe {
    pub fn cpu_us(&self) -> Option<u64> {
        cpu_us(self.pid).ok()
    }
    pub fn rss(&self) -> Option<u64> {
        rss_bytes(self.pid).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_process_listening_on_a_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(pid_listening_on(port), Some(std::process::id()));
    }

    #[test]
    fn reads_own_cpu_and_rss() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        let a = cpu_us(me).unwrap();
        let t = now_ns();
        let mut x = 0u64;
        while now_ns() - t < 30_000_000 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_us(me).unwrap() >= a);
    }
}
