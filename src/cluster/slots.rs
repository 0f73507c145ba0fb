//! Slot routing for Redis Cluster: which shard owns a key, read from the cluster itself.
//!
//! A key belongs to one of [`SLOTS`] slots (CRC16 of its hash tag, the Redis Cluster spec
//! "Key distribution model"); each slot is served by one master, its shard. [`Topology`] is one
//! reading of that map (`CLUSTER SLOTS`), taken by [`Topology::discover`]; a standalone server is a
//! topology of one shard owning every slot, so callers route the same way in both cases.
//! [`redirect_of`] reads the `MOVED`/`ASK` answers that say a reading went stale.
//!
//! What it leaves to others: connections to the shards, when to rediscover, and retrying a command
//! after a redirect are the caller's. The crate's own cluster feature is not used: we also need
//! sharded pub/sub on sync connections (`subscriber`), which it lacks, and routing is this small.

use std::io;
use std::time::Duration;

use redis::{RedisError, Value};

/// Slots in a Redis Cluster (spec: "16384 hash slots").
pub(crate) const SLOTS: u16 = 16384;

/// CRC16/XMODEM (poly 0x1021, init 0, no reflection), as the spec's `crc16.c`, by table.
const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ b)]
    })
}

/// The part of `key` that is hashed: the spec's hash tag rule. If the key has a `{`, and a `}`
/// after the first `{`, with at least one byte between them, only those bytes are hashed;
/// otherwise the whole key (so `foo{}{bar}` hashes whole and `foo{{bar}}zap` hashes `{bar`).
fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The slot of `key` (also of a shard channel name): CRC16 of its hash tag, mod [`SLOTS`].
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    crc16(hash_tag(key)) % SLOTS
}

/// Slots `start..=end` are served by shard `shard`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SlotRange {
    start: u16,
    end: u16,
    shard: usize,
}

/// One reading of the cluster's slot map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Topology {
    /// INVARIANT: sorted by `start`, not overlapping; gaps are uncovered slots.
    ranges: Vec<SlotRange>,
    /// Shard index → its master, `host:port`. Ordered by the shard's lowest slot, so two readings
    /// of one map number the shards alike.
    masters: Vec<String>,
    /// Shard index → its replicas, `host:port`, as the master's `CLUSTER SLOTS` entry lists them.
    replicas: Vec<Vec<String>>,
    /// False for a standalone server ([`Topology::single`]).
    cluster: bool,
}

impl Topology {
    /// Asks the seeds in turn (`redis://host:port` URLs or `host:port`) with `CLUSTER SLOTS`; the
    /// first answer wins. A standalone server (its "cluster support disabled" error) gives
    /// [`Topology::single`] of its address. Fails with the last seed's error when none answers,
    /// or `InvalidData` when a reply makes no sense.
    pub(crate) fn discover(seeds: &[String], timeout: Duration) -> io::Result<Topology> {
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no Redis seed given");
        for seed in seeds {
            match ask(seed, timeout) {
                Ok(t) => return Ok(t),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// A standalone server at `addr` (`host:port`): one shard, every slot.
    pub(crate) fn single(addr: String) -> Topology {
        Topology {
            ranges: vec![SlotRange {
                start: 0,
                end: SLOTS - 1,
                shard: 0,
            }],
            masters: vec![addr],
            replicas: vec![Vec::new()],
            cluster: false,
        }
    }

    /// Whether this is a Redis Cluster (as opposed to one standalone server).
    pub(crate) fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The masters, `host:port`; a shard's index is its position here.
    pub(crate) fn masters(&self) -> &[String] {
        &self.masters
    }

    /// The replicas of shard `shard`, `host:port` (empty for an unknown shard).
    pub(crate) fn replicas(&self, shard: usize) -> &[String] {
        self.replicas.get(shard).map_or(&[], |r| r.as_slice())
    }

    /// The shard serving `slot`; `None` when no master covers it (or `slot >= SLOTS`).
    pub(crate) fn shard_of_slot(&self, slot: u16) -> Option<usize> {
        let i = self.ranges.partition_point(|r| r.start <= slot);
        let r = self.ranges[..i].last()?;
        (slot <= r.end).then_some(r.shard)
    }

    /// The shard serving `key`'s slot (see [`slot_of`]).
    pub(crate) fn shard_of_key(&self, key: &[u8]) -> Option<usize> {
        self.shard_of_slot(slot_of(key))
    }

    /// Whether every slot has a master.
    pub(crate) fn covers_all(&self) -> bool {
        let covered: u32 = self
            .ranges
            .iter()
            .map(|r| u32::from(r.end - r.start) + 1)
            .sum();
        covered == u32::from(SLOTS)
    }
}

/// A client for a seed given as `redis://[user:pass@]host:port[/db]` or `host:port`, and its
/// `host:port`.
fn seed_client(seed: &str) -> io::Result<(redis::Client, String)> {
    let url = if seed.contains("://") {
        seed.to_owned()
    } else {
        format!("redis://{seed}")
    };
    let client = redis::Client::open(url.as_str()).map_err(to_io)?;
    let addr = match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a TCP Redis address: {other}"),
            ))
        }
    };
    Ok((client, addr))
}

/// One seed's answer.
fn ask(seed: &str, timeout: Duration) -> io::Result<Topology> {
    let (client, addr) = seed_client(seed)?;
    let mut con = client.get_connection_with_timeout(timeout).map_err(to_io)?;
    con.set_read_timeout(Some(timeout)).map_err(to_io)?;
    con.set_write_timeout(Some(timeout)).map_err(to_io)?;
    match redis::cmd("CLUSTER").arg("SLOTS").query::<Value>(&mut con) {
        Ok(v) => {
            let host = addr.rsplit_once(':').map_or("", |(h, _)| h);
            parse_slots(&v, host).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        }
        Err(e) if is_standalone(&e) => Ok(Topology::single(addr)),
        Err(e) => Err(to_io(e)),
    }
}

/// "ERR This instance has cluster support disabled" (Redis 3 to 7).
fn is_standalone(e: &RedisError) -> bool {
    e.detail()
        .is_some_and(|d| d.contains("cluster support disabled"))
}

fn to_io(e: RedisError) -> io::Error {
    if e.is_timeout() {
        io::Error::new(io::ErrorKind::TimedOut, e.to_string())
    } else {
        io::Error::other(e.to_string())
    }
}

/// Reads a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, ...], replica...], ...]`.
/// An empty host means "the address this request came to" (`seed_host`); a node whose endpoint
/// is unknown (`?` or nil, Redis 7) is left out, and a range without a known master is uncovered.
fn parse_slots(v: &Value, seed_host: &str) -> Result<Topology, String> {
    let Value::Array(entries) = v else {
        return Err(format!("CLUSTER SLOTS: not an array: {v:?}"));
    };
    let mut ranges = Vec::with_capacity(entries.len());
    let mut masters: Vec<String> = Vec::new();
    let mut replicas: Vec<Vec<String>> = Vec::new();
    for entry in entries {
        let Value::Array(fields) = entry else {
            return Err(format!("CLUSTER SLOTS: entry not an array: {entry:?}"));
        };
        let (Some(start), Some(end)) = (fields.first().and_then(int), fields.get(1).and_then(int))
        else {
            return Err(format!("CLUSTER SLOTS: bad range in {entry:?}"));
        };
        if !(0..i64::from(SLOTS)).contains(&start) || !(start..i64::from(SLOTS)).contains(&end) {
            return Err(format!("CLUSTER SLOTS: range {start}-{end} out of bounds"));
        }
        let Some(master) = fields.get(2).and_then(|n| node_addr(n, seed_host)) else {
            continue;
        };
        let shard = match masters.iter().position(|m| *m == master) {
            Some(i) => i,
            None => {
                masters.push(master);
                replicas.push(Vec::new());
                masters.len() - 1
            }
        };
        for r in fields
            .iter()
            .skip(3)
            .filter_map(|n| node_addr(n, seed_host))
        {
            if !replicas[shard].contains(&r) {
                replicas[shard].push(r);
            }
        }
        ranges.push(SlotRange {
            start: start as u16,
            end: end as u16,
            shard,
        });
    }
    ranges.sort_by_key(|r| r.start);
    if let Some(w) = ranges.windows(2).find(|w| w[1].start <= w[0].end) {
        return Err(format!("CLUSTER SLOTS: overlapping ranges {w:?}"));
    }
    // Number the shards by their lowest slot (the reply's order is the server's hash table's).
    let mut order: Vec<usize> = Vec::with_capacity(masters.len());
    for r in &ranges {
        if !order.contains(&r.shard) {
            order.push(r.shard);
        }
    }
    let mut renumber = vec![0; masters.len()];
    for (new, &old) in order.iter().enumerate() {
        renumber[old] = new;
    }
    for r in &mut ranges {
        r.shard = renumber[r.shard];
    }
    let mut m = vec![String::new(); masters.len()];
    let mut rep = vec![Vec::new(); masters.len()];
    for (old, (addr, reps)) in masters.into_iter().zip(replicas).enumerate() {
        m[renumber[old]] = addr;
        rep[renumber[old]] = reps;
    }
    Ok(Topology {
        ranges,
        masters: m,
        replicas: rep,
        cluster: true,
    })
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `host:port` of a node entry `[host, port, id, ...]`.
fn node_addr(v: &Value, seed_host: &str) -> Option<String> {
    let Value::Array(f) = v else { return None };
    let host = text(f.first()?)?;
    let port = int(f.get(1)?)?;
    let host = match host.as_str() {
        "?" => return None,
        "" => seed_host.to_owned(),
        _ => host,
    };
    Some(format!("{host}:{port}"))
}

/// A cluster's answer that the slot of a command's key is served elsewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Redirect {
    /// The slot belongs to `addr` now: rediscover, then retry there.
    Moved { slot: u16, addr: String },
    /// The slot is being migrated to `addr` and this key is already there: retry this one command
    /// there after `ASKING`, without updating the map.
    Ask { slot: u16, addr: String },
}

/// The redirect in an error from the `redis` crate (code `MOVED`/`ASK`, detail `slot host:port`).
pub(crate) fn redirect_of(e: &RedisError) -> Option<Redirect> {
    redirect(e.code()?, e.detail()?)
}

/// The redirect in an error line as Redis sends it, without the `-`: `MOVED 3999 127.0.0.1:6381`
/// (what [`super::subscriber`] reports for an `SSUBSCRIBE` sent to the wrong shard).
pub(crate) fn parse_redirect(line: &str) -> Option<Redirect> {
    let (code, detail) = line.split_once(' ')?;
    redirect(code, detail)
}

fn redirect(code: &str, detail: &str) -> Option<Redirect> {
    let mut words = detail.split_ascii_whitespace();
    let slot: u16 = words.next()?.parse().ok().filter(|s| *s < SLOTS)?;
    let addr = words.next()?.to_owned();
    match code {
        "MOVED" => Some(Redirect::Moved { slot, addr }),
        "ASK" => Some(Redirect::Ask { slot, addr }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_spec_test_vector() {
        // Redis Cluster spec, appendix A: "Output for "123456789": 31C3".
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    macro_rules! slots {
        ($($key:expr => $slot:expr),* $(,)?) => {$(
            assert_eq!(slot_of($key), $slot, "{}", String::from_utf8_lossy($key));
        )*};
    }

    #[test]
    fn slot_of_known_keys() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.0.
        slots! {
            b"a" => 15495, b"b" => 3300, b"c" => 7365, b"foo" => 12182, b"bar" => 5061,
            b"123456789" => 0x31C3, // under 16384: the CRC itself
            b"" => 0,
        }
    }

    #[test]
    fn hash_tags_follow_the_spec() {
        assert_eq!(
            slot_of(b"{user1000}.following"),
            slot_of(b"{user1000}.followers")
        );
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        // Empty first tag: the whole key is hashed.
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"{"), b"{");
        assert_eq!(hash_tag(b"}{"), b"}{");
        assert_eq!(hash_tag(b"x{y"), b"x{y");
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
    }

    fn resp(bytes: &[u8]) -> Value {
        redis::parse_redis_value(bytes).expect("valid RESP")
    }

    /// A Redis 7.0 `CLUSTER SLOTS` reply for three shards, one replica each, in the server's order.
    const SLOTS_REPLY: &[u8] = b"*3\r\n\
        *4\r\n:5461\r\n:10922\r\n\
          *4\r\n$9\r\n127.0.0.1\r\n:7001\r\n$3\r\nid1\r\n*0\r\n\
          *4\r\n$9\r\n127.0.0.1\r\n:7004\r\n$3\r\nid4\r\n*0\r\n\
        *4\r\n:0\r\n:5460\r\n\
          *4\r\n$9\r\n127.0.0.1\r\n:7000\r\n$3\r\nid0\r\n*0\r\n\
          *4\r\n$9\r\n127.0.0.1\r\n:7003\r\n$3\r\nid3\r\n*0\r\n\
        *4\r\n:10923\r\n:16383\r\n\
          *4\r\n$9\r\n127.0.0.1\r\n:7002\r\n$3\r\nid2\r\n*0\r\n\
          *4\r\n$9\r\n127.0.0.1\r\n:7005\r\n$3\r\nid5\r\n*0\r\n";

    #[test]
    fn parses_cluster_slots() {
        let t = parse_slots(&resp(SLOTS_REPLY), "ignored").unwrap();
        assert!(t.is_cluster());
        assert!(t.covers_all());
        assert_eq!(
            t.masters(),
            ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"]
        );
        assert_eq!(t.replicas(0), ["127.0.0.1:7003"]);
        assert_eq!(t.replicas(2), ["127.0.0.1:7005"]);
        assert!(t.replicas(3).is_empty());
        for (slot, shard) in [
            (0, 0),
            (5460, 0),
            (5461, 1),
            (10922, 1),
            (10923, 2),
            (16383, 2),
        ] {
            assert_eq!(t.shard_of_slot(slot), Some(shard), "slot {slot}");
        }
        assert_eq!(t.shard_of_slot(SLOTS), None);
        assert_eq!(t.shard_of_key(b"b"), Some(0));
        assert_eq!(t.shard_of_key(b"c"), Some(1));
        assert_eq!(t.shard_of_key(b"a"), Some(2));
    }

    #[test]
    fn parses_split_ranges_gaps_and_unknown_hosts() {
        // Shard 7000 owns two ranges (a migrated slot), slot 100 is uncovered, the second master's
        // host is empty (= the seed's) and one replica's endpoint is unknown.
        let reply = b"*4\r\n\
            *3\r\n:0\r\n:99\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n\
            *3\r\n:101\r\n:200\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n\
            *4\r\n:201\r\n:16383\r\n*3\r\n$0\r\n\r\n:7001\r\n$2\r\nid\r\n*3\r\n$1\r\n?\r\n:7004\r\n$2\r\nid\r\n\
            *3\r\n:300\r\n:300\r\n*3\r\n$1\r\n?\r\n:7009\r\n$2\r\nid\r\n";
        // The last entry overlaps, but its master is unknown: left out.
        let t = parse_slots(&resp(reply), "10.0.0.9").unwrap();
        assert_eq!(t.masters(), ["127.0.0.1:7000", "10.0.0.9:7001"]);
        assert!(t.replicas(1).is_empty());
        assert_eq!(t.shard_of_slot(99), Some(0));
        assert_eq!(t.shard_of_slot(100), None);
        assert_eq!(t.shard_of_slot(101), Some(0));
        assert_eq!(t.shard_of_slot(201), Some(1));
        assert!(!t.covers_all());
    }

    #[test]
    fn refuses_nonsense() {
        assert!(parse_slots(&resp(b":1\r\n"), "h").is_err());
        assert!(parse_slots(&resp(b"*1\r\n:1\r\n"), "h").is_err());
        let out_of_bounds = b"*1\r\n*3\r\n:0\r\n:16384\r\n*2\r\n$1\r\nh\r\n:1\r\n";
        assert!(parse_slots(&resp(out_of_bounds), "h").is_err());
        let overlap = b"*2\r\n*3\r\n:0\r\n:10\r\n*2\r\n$1\r\nh\r\n:1\r\n\
            *3\r\n:10\r\n:20\r\n*2\r\n$1\r\nh\r\n:2\r\n";
        assert!(parse_slots(&resp(overlap), "h").is_err());
        // No ranges at all: a cluster with nothing assigned yet.
        let t = parse_slots(&resp(b"*0\r\n"), "h").unwrap();
        assert!(t.masters().is_empty());
        assert_eq!(t.shard_of_slot(0), None);
    }

    #[test]
    fn single_covers_everything() {
        let t = Topology::single("127.0.0.1:6379".into());
        assert!(!t.is_cluster());
        assert!(t.covers_all());
        assert_eq!(t.shard_of_slot(0), Some(0));
        assert_eq!(t.shard_of_slot(SLOTS - 1), Some(0));
        assert_eq!(t.masters(), ["127.0.0.1:6379"]);
    }

    #[test]
    fn seeds_in_both_spellings() {
        let addr = |s: &str| seed_client(s).map(|(_, a)| a);
        assert_eq!(addr("127.0.0.1:7000").unwrap(), "127.0.0.1:7000");
        assert_eq!(addr("redis://127.0.0.1:7000").unwrap(), "127.0.0.1:7000");
        assert_eq!(
            addr("redis://:pw@localhost:7000/0").unwrap(),
            "localhost:7000"
        );
        assert!(addr("unix:///tmp/redis.sock").is_err());
    }

    fn error(line: &[u8]) -> RedisError {
        resp(line).extract_error().expect_err("an error reply")
    }

    #[test]
    fn redirects_from_errors() {
        assert_eq!(
            redirect_of(&error(b"-MOVED 3999 127.0.0.1:6381\r\n")),
            Some(Redirect::Moved {
                slot: 3999,
                addr: "127.0.0.1:6381".into()
            })
        );
        assert_eq!(
            redirect_of(&error(b"-ASK 3999 127.0.0.1:6381\r\n")),
            Some(Redirect::Ask {
                slot: 3999,
                addr: "127.0.0.1:6381".into()
            })
        );
        assert_eq!(redirect_of(&error(b"-ERR MOVED 1 h:1\r\n")), None);
        assert_eq!(redirect_of(&error(b"-MOVED 16384 h:1\r\n")), None);
        assert_eq!(redirect_of(&error(b"-MOVED x h:1\r\n")), None);
        assert_eq!(redirect_of(&error(b"-MOVED 1\r\n")), None);
        assert_eq!(
            parse_redirect("MOVED 7365 127.0.0.1:7101"),
            Some(Redirect::Moved {
                slot: 7365,
                addr: "127.0.0.1:7101".into()
            })
        );
        assert_eq!(parse_redirect("ERR unknown command"), None);
    }
}
