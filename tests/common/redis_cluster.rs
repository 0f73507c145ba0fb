//! Real Redis for tests: a 6-node Redis Cluster (3 masters, 1 replica each) on free loopback
//! ports, and a standalone server, every process stopped by PID when dropped and its temporary
//! directory removed.
//!
//! Shared by `tests/redis_cluster.rs` and the crate's own unit tests (`src/cluster/redis_tests.rs`
//! includes this file by `#[path]`), so it needs nothing but `std`, `redis` and `libc`, and no
//! `wisp` item: the crate-private code under test stays private.
//!
//! Without `redis-server` and `redis-cli` on the PATH, `start` prints a notice and gives `None`,
//! and the test passes (CI installs them: `scripts/install-deps.sh`).
//!
//! Settings, each for a fast and deterministic failover on a loaded machine (more in
//! `docs/redis-cluster-notes.md`):
//! - `cluster-node-timeout 1000`: a master unreachable this long is `PFAIL`, then `FAIL` once a
//!   majority of masters agree; its replica is elected some 0.5–1 s later. Failover ≈ 2–3 s.
//! - `cluster-replica-validity-factor 0`: a replica always stands for election, however long
//!   since it last heard its master (by default one "too old" declines, and a starved test
//!   machine can make every replica too old: no failover at all).
//! - `cluster-require-full-coverage no`: the other shards keep serving while one has no master
//!   (the default turns the whole cluster to `fail`, refusing every command).
//! - `cluster-allow-reads-when-down yes`: reads still served while the cluster is `fail`.
//! - `cluster-allow-pubsubshard-when-down yes` (the default, said here): `SSUBSCRIBE`/`SPUBLISH`
//!   keep working for slots this node owns while the cluster is `fail`.
//! - `cluster-port`: chosen free, not the default port + 10000, which is past 65535 for half of
//!   Linux's ephemeral ports and may be taken.
//! - `repl-diskless-sync-delay 0`: the default waits 5 s for more replicas before a full sync.
//! - `repl-ping-replica-period 1`: Redis 7.0 leaves a replica out of `CLUSTER SLOTS` while its
//!   replication offset is 0; without writes, the master's replication `PING` (every 10 s by
//!   default) is what first moves it, so a fresh cluster would show no replicas for 10 s.
//! - `save ''`, `appendonly no`: nothing on disk but the cluster's `nodes-PORT.conf`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use redis::Value;

/// The bound on every wait: generous, for a loaded 2-core machine.
pub const CLUSTER_WAIT: Duration = Duration::from_secs(30);
/// How often a wait polls.
const POLL: Duration = Duration::from_millis(20);

/// Whether `redis-server` (and `redis-cli`, for the cluster) can be run; prints a notice if not.
fn installed(test: &str, tools: &[&str]) -> bool {
    for tool in tools {
        let ok = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED {test}: {tool} is not installed (apt-get install redis-server)");
            return false;
        }
    }
    true
}

/// `n` distinct free loopback ports (all bound at once, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A fresh temporary directory, removed by [`TempDir`]'s drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wisp-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `redis-server` process.
struct Proc {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Proc {
    fn spawn(port: u16, dir: &Path, extra: &[String]) -> Proc {
        let log = dir.join(format!("{port}.log"));
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(&log)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        Proc {
            child: Some(child),
            port,
            log,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until it answers `PING`; panics with its log if it died or never answers.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + CLUSTER_WAIT;
        loop {
            if let Ok(mut c) = try_con(&self.addr()) {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            assert!(
                self.alive(),
                "redis-server on {} exited: {}",
                self.port,
                self.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "redis-server on {} never answered",
                self.port
            );
            thread::sleep(POLL);
        }
    }

    /// SIGKILL, as a crash; reaped.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A process still running when its `Proc` goes (a panic half-way through a start) is killed.
impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Stops every process: SIGTERM to all (by PID), up to 2 s for them to exit, then SIGKILL.
fn stop_all(procs: &mut [Proc]) {
    for p in procs.iter() {
        if let Some(c) = &p.child {
            // SAFETY: `kill(2)` with the PID of our own unreaped child: it cannot name another
            // process, since a PID is not reused before its zombie is reaped.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    for p in procs.iter_mut() {
        if let Some(c) = p.child.as_mut() {
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        }
        p.kill();
    }
}

fn try_con(addr: &str) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://{addr}"))?;
    let c = client.get_connection_with_timeout(Duration::from_secs(2))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(c)
}

/// A connection to `addr` (`host:port`).
pub fn con(addr: &str) -> redis::Connection {
    try_con(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// Polls `f` until it gives `Some`, at most [`CLUSTER_WAIT`]; panics naming `what`.
pub fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + CLUSTER_WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(POLL);
    }
}

/// A standalone `redis-server`.
pub struct Standalone {
    proc: Vec<Proc>,
    _dir: TempDir,
}

impl Standalone {
    pub fn start(test: &str) -> Option<Standalone> {
        if !installed(test, &["redis-server"]) {
            return None;
        }
        let dir = TempDir::new("redis");
        let port = free_ports(1)[0];
        let mut p = Proc::spawn(port, &dir.0, &[]);
        p.wait_ready();
        Some(Standalone {
            proc: vec![p],
            _dir: dir,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.proc[0].addr()
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        stop_all(&mut self.proc);
    }
}

/// A slot range as `CLUSTER SLOTS` tells it: `start..=end`, master, replicas (`host:port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub start: u16,
    pub end: u16,
    pub master: String,
    pub replicas: Vec<String>,
}

/// What [`RedisCluster::kill_master_of`] saw.
#[derive(Debug)]
pub struct Failover {
    pub old: String,
    pub new: String,
    /// From the SIGKILL until every live node's `CLUSTER SLOTS` names `new`.
    pub took: Duration,
}

/// Six `redis-server`s in one cluster: 3 masters, 1 replica each.
pub struct RedisCluster {
    procs: Vec<Proc>,
    /// How long [`RedisCluster::start`] took.
    pub started_in: Duration,
    dir: TempDir,
}

/// Reads a `CLUSTER SLOTS` reply.
fn ranges_of(v: &Value) -> Vec<Range> {
    let node = |n: &Value| -> Option<String> {
        let Value::Array(f) = n else { return None };
        match (f.first()?, f.get(1)?) {
            (Value::BulkString(h), Value::Int(p)) => {
                Some(format!("{}:{p}", String::from_utf8_lossy(h)))
            }
            _ => None,
        }
    };
    let Value::Array(entries) = v else {
        panic!("CLUSTER SLOTS: {v:?}")
    };
    let mut out: Vec<Range> = entries
        .iter()
        .map(|e| {
            let Value::Array(f) = e else {
                panic!("CLUSTER SLOTS entry: {e:?}")
            };
            let (Value::Int(s), Value::Int(t)) = (&f[0], &f[1]) else {
                panic!("CLUSTER SLOTS range: {e:?}")
            };
            Range {
                start: *s as u16,
                end: *t as u16,
                master: node(&f[2]).expect("a master"),
                replicas: f[3..].iter().filter_map(node).collect(),
            }
        })
        .collect();
    out.sort_by_key(|r| r.start);
    out
}

/// `field:value` lines of `INFO`/`CLUSTER INFO` into a map.
fn info_map(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim_end().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl RedisCluster {
    /// Starts the cluster and waits until every node says `cluster_state:ok`, agrees on the slot
    /// map, and every replica is in sync; `None` (with a notice) without `redis-server`/`redis-cli`.
    pub fn start(test: &str) -> Option<RedisCluster> {
        if !installed(test, &["redis-server", "redis-cli"]) {
            return None;
        }
        let t0 = Instant::now();
        let dir = TempDir::new("redis-cluster");
        let ports = free_ports(12);
        let procs: Vec<Proc> = (0..6)
            .map(|i| {
                let (port, bus) = (ports[i], ports[6 + i]);
                let settings: Vec<String> = [
                    "--cluster-enabled yes",
                    &format!("--cluster-port {bus}"),
                    &format!(
                        "--cluster-config-file {}",
                        dir.0.join(format!("nodes-{port}.conf")).display()
                    ),
                    "--cluster-node-timeout 1000",
                    "--cluster-replica-validity-factor 0",
                    "--cluster-require-full-coverage no",
                    "--cluster-allow-reads-when-down yes",
                    "--cluster-allow-pubsubshard-when-down yes",
                    "--repl-diskless-sync-delay 0",
                    "--repl-ping-replica-period 1",
                ]
                .iter()
                .flat_map(|s| {
                    let (k, v) = s.split_once(' ').unwrap();
                    [k.to_owned(), v.to_owned()]
                })
                .collect();
                Proc::spawn(port, &dir.0, &settings)
            })
            .collect();
        let mut cluster = RedisCluster {
            procs,
            started_in: Duration::ZERO,
            dir,
        };
        for p in &mut cluster.procs {
            p.wait_ready();
        }
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(cluster.procs.iter().map(Proc::addr))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_converged("the new cluster");
        cluster.started_in = t0.elapsed();
        Some(cluster)
    }

    /// Every node's address, the dead included.
    pub fn all_addrs(&self) -> Vec<String> {
        self.procs.iter().map(Proc::addr).collect()
    }

    /// The live nodes' addresses, `127.0.0.1:PORT`: seeds for discovery.
    pub fn seeds(&self) -> Vec<String> {
        self.live().map(Proc::addr).collect()
    }

    fn live(&self) -> impl Iterator<Item = &Proc> {
        self.procs.iter().filter(|p| p.child.is_some())
    }

    /// The slot map as node `addr` sees it.
    pub fn slots_at(&self, addr: &str) -> redis::RedisResult<Vec<Range>> {
        let v: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut try_con(addr)?)?;
        Ok(ranges_of(&v))
    }

    /// The slot map as the first live node sees it.
    pub fn slots(&self) -> Vec<Range> {
        let first = self.seeds()[0].clone();
        self.slots_at(&first).expect("CLUSTER SLOTS")
    }

    /// The masters, by lowest slot.
    pub fn masters(&self) -> Vec<String> {
        let mut m: Vec<String> = Vec::new();
        for r in self.slots() {
            if !m.contains(&r.master) {
                m.push(r.master);
            }
        }
        m
    }

    /// `CLUSTER KEYSLOT key`, asked of a live node.
    pub fn keyslot(&self, key: &[u8]) -> u16 {
        let mut c = con(&self.seeds()[0]);
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut c)
            .expect("CLUSTER KEYSLOT")
    }

    pub fn master_of_slot(&self, slot: u16) -> String {
        self.slots()
            .into_iter()
            .find(|r| (r.start..=r.end).contains(&slot))
            .unwrap_or_else(|| panic!("slot {slot} uncovered"))
            .master
    }

    /// `CLUSTER MYID` of `addr`.
    pub fn node_id(&self, addr: &str) -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut con(addr))
            .expect("CLUSTER MYID")
    }

    /// Waits until every live node says `cluster_state:ok` and shows the same slot map, every
    /// slot covered and every shard with a replica, and every replica has finished its sync.
    fn wait_converged(&self, what: &str) {
        poll(what, || {
            let mut first: Option<Vec<Range>> = None;
            for addr in self.seeds() {
                let mut c = try_con(&addr).ok()?;
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut c).ok()?;
                if info_map(&info).get("cluster_state").map(String::as_str) != Some("ok") {
                    return None;
                }
                let repl: String = redis::cmd("INFO").arg("replication").query(&mut c).ok()?;
                let repl = info_map(&repl);
                if repl.get("role").map(String::as_str) == Some("slave")
                    && (repl.get("master_link_status").map(String::as_str) != Some("up")
                        || repl.get("master_sync_in_progress").map(String::as_str) != Some("0"))
                {
                    return None;
                }
                let mut map = self.slots_at(&addr).ok()?;
                for r in &mut map {
                    r.replicas.sort();
                }
                let covered: u32 = map.iter().map(|r| u32::from(r.end - r.start) + 1).sum();
                if covered != 16384 || map.iter().any(|r| r.replicas.is_empty()) {
                    return None;
                }
                match &first {
                    None => first = Some(map),
                    Some(f) if *f != map => return None,
                    Some(_) => {}
                }
            }
            Some(())
        })
    }

    /// Waits until every live node's `CLUSTER SLOTS` gives `slot` to `owner`.
    fn wait_owner(&self, slot: u16, owner: &str) {
        poll(
            &format!("every node to give slot {slot} to {owner}"),
            || {
                for addr in self.seeds() {
                    let map = self.slots_at(&addr).ok()?;
                    let r = map.iter().find(|r| (r.start..=r.end).contains(&slot))?;
                    if r.master != owner {
                        return None;
                    }
                }
                Some(())
            },
        )
    }

    /// SIGKILLs the master of `slot`, then waits until a replica is promoted and every live node's
    /// `CLUSTER SLOTS` names it.
    pub fn kill_master_of(&mut self, slot: u16) -> Failover {
        let old = self.master_of_slot(slot);
        let t0 = Instant::now();
        self.procs
            .iter_mut()
            .find(|p| p.addr() == old)
            .expect("the master is ours")
            .kill();
        let new = poll(&format!("a new master for slot {slot}"), || {
            let mut seen: Option<String> = None;
            for addr in self.seeds() {
                let map = self.slots_at(&addr).ok()?;
                let r = map.iter().find(|r| (r.start..=r.end).contains(&slot))?;
                if r.master == old || seen.as_ref().is_some_and(|s| *s != r.master) {
                    return None;
                }
                seen = Some(r.master.clone());
            }
            seen
        });
        let took = t0.elapsed();
        // Every live node says so; make sure the new master itself knows it is one.
        poll("the new master's role", || {
            let role: Vec<Value> = redis::cmd("ROLE").query(&mut try_con(&new).ok()?).ok()?;
            matches!(role.first(), Some(Value::BulkString(r)) if r == b"master").then_some(())
        });
        Failover { old, new, took }
    }

    /// Moves one slot, keys included, to master `to` (`host:port`), as the spec's resharding
    /// steps: `SETSLOT IMPORTING` on the target, `MIGRATING` on the source, `MIGRATE` the keys a
    /// hundred at a time, then `SETSLOT NODE` on the target, the source and the other masters.
    /// Returns when every live node's `CLUSTER SLOTS` gives the slot to `to`.
    pub fn migrate_slot(&self, slot: u16, to: &str) {
        let from = self.master_of_slot(slot);
        if from == to {
            return;
        }
        let (from_id, to_id) = (self.node_id(&from), self.node_id(to));
        let mut src = con(&from);
        let mut dst = con(to);
        let setslot = |c: &mut redis::Connection, state: &str, id: &str| {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(id)
                .query::<()>(c)
                .unwrap_or_else(|e| panic!("SETSLOT {slot} {state} {id}: {e}"));
        };
        setslot(&mut dst, "IMPORTING", &from_id);
        setslot(&mut src, "MIGRATING", &to_id);
        let (host, port) = to.rsplit_once(':').unwrap();
        loop {
            let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query(&mut src)
                .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            redis::cmd("MIGRATE")
                .arg(host)
                .arg(port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query::<()>(&mut src)
                .expect("MIGRATE");
        }
        setslot(&mut dst, "NODE", &to_id);
        setslot(&mut src, "NODE", &to_id);
        for m in self.masters() {
            if m != from && m != to {
                setslot(&mut con(&m), "NODE", &to_id);
            }
        }
        self.wait_owner(slot, to);
    }

    /// The nodes' logs, for a failure message.
    pub fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {} ---\n{}", p.port, p.log_text()))
            .collect()
    }

    /// The temporary directory (configs, logs).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        stop_all(&mut self.procs);
    }
}
