//! `slots` and `subscriber` against real `redis-server`s: a standalone one and a 6-node cluster
//! (3 masters, 1 replica each), started per test by the harness the integration tests use
//! (`tests/common/redis_cluster.rs`, included here by path so that these crate-private modules
//! are tested as they are, without a public test hook). Without `redis-server`/`redis-cli`
//! each test prints a notice and passes.

use std::io;
use std::time::{Duration, Instant};

use super::slots::{redirect_of, slot_of, Redirect, Topology, SLOTS};
use super::subscriber::{self, Push, SubHandle, Subscriber};

#[allow(unreachable_pub)]
#[path = "../../tests/common/redis_cluster.rs"]
mod harness;

use harness::{con, RedisCluster, Standalone};

const TIMEOUT: Duration = Duration::from_secs(5);

/// The next push that is not silence, within `TIMEOUT`.
fn next(sub: &mut Subscriber) -> Push {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match sub.next() {
            Ok(p) => return p,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                assert!(Instant::now() < deadline, "no push within {TIMEOUT:?}");
            }
            Err(e) => panic!("subscriber: {e}"),
        }
    }
}

fn subscriber_on(addr: &str) -> (Subscriber, SubHandle) {
    let (sub, h) = subscriber::connect(addr, TIMEOUT).expect("connect");
    sub.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    (sub, h)
}

fn spublish(addr: &str, channel: &[u8], payload: &[u8]) -> redis::RedisResult<i64> {
    redis::cmd("SPUBLISH")
        .arg(channel)
        .arg(payload)
        .query(&mut con(addr))
}

/// A small deterministic generator for the random keys.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// 0 to 20 bytes, `{`/`}` likely, any byte possible.
    fn key(&mut self) -> Vec<u8> {
        let len = (self.next() % 21) as usize;
        (0..len)
            .map(|_| match self.next() % 8 {
                0 => b'{',
                1 => b'}',
                2 => (self.next() & 0xff) as u8,
                _ => b'a' + (self.next() % 26) as u8,
            })
            .collect()
    }
}

#[test]
fn standalone_is_a_single_shard_and_ssubscribe_works() {
    let Some(redis) = Standalone::start("standalone_is_a_single_shard_and_ssubscribe_works") else {
        return;
    };
    let url = format!("redis://{}", redis.addr());
    let t = Topology::discover(&["127.0.0.1:1".into(), url], TIMEOUT).expect("discover");
    assert_eq!(t, Topology::single(redis.addr()));
    assert!(!t.is_cluster());

    let (mut sub, h) = subscriber_on(&redis.addr());
    h.ssubscribe(&[b"room:a"]).unwrap();
    h.subscribe(&[b"global"]).unwrap();
    assert_eq!(
        next(&mut sub),
        Push::Subscribed {
            channel: b"room:a".to_vec(),
            count: 1
        }
    );
    assert_eq!(
        next(&mut sub),
        Push::Subscribed {
            channel: b"global".to_vec(),
            count: 1
        }
    );
    assert_eq!(spublish(&redis.addr(), b"room:a", b"hello").unwrap(), 1);
    let n: i64 = redis::cmd("PUBLISH")
        .arg("global")
        .arg("g")
        .query(&mut con(&redis.addr()))
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        next(&mut sub),
        Push::Message {
            channel: b"room:a".to_vec(),
            payload: b"hello".to_vec()
        }
    );
    assert_eq!(
        next(&mut sub),
        Push::Message {
            channel: b"global".to_vec(),
            payload: b"g".to_vec()
        }
    );
    // A payload larger than one read, binary, from another thread's handle.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    spublish(&redis.addr(), b"room:a", &big).unwrap();
    let h2 = h.clone();
    std::thread::spawn(move || h2.ping().unwrap())
        .join()
        .unwrap();
    assert_eq!(
        next(&mut sub),
        Push::Message {
            channel: b"room:a".to_vec(),
            payload: big
        }
    );
    assert_eq!(next(&mut sub), Push::Pong);
    h.sunsubscribe(&[b"room:a"]).unwrap();
    assert_eq!(
        next(&mut sub),
        Push::Unsubscribed {
            channel: b"room:a".to_vec(),
            count: 0
        }
    );
    h.shutdown();
    assert!(sub.next().is_err());
}

#[test]
fn discover_and_slot_of_agree_with_the_cluster() {
    let Some(cluster) = RedisCluster::start("discover_and_slot_of_agree_with_the_cluster") else {
        return;
    };
    eprintln!("cluster started in {:?}", cluster.started_in);
    // A dead seed first: discovery moves on to the next.
    let mut seeds = vec!["127.0.0.1:1".to_owned()];
    seeds.extend(cluster.seeds().iter().map(|s| format!("redis://{s}")));
    let t = Topology::discover(&seeds, TIMEOUT).expect("discover");
    assert!(t.is_cluster());
    assert!(t.covers_all());
    assert_eq!(t.masters(), cluster.masters());
    for (shard, r) in cluster.slots().iter().enumerate() {
        assert_eq!(t.masters()[shard], r.master);
        assert_eq!(t.replicas(shard), r.replicas);
        for slot in [r.start, r.end, (r.start + r.end) / 2] {
            assert_eq!(t.shard_of_slot(slot), Some(shard));
        }
    }
    assert_eq!(t.shard_of_slot(SLOTS), None);

    // slot_of agrees with CLUSTER KEYSLOT, one pipeline of 1,000 random keys with tags.
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut keys: Vec<Vec<u8>> = (0..994).map(|_| rng.key()).collect();
    keys.extend(
        [
            &b"{user1000}.following"[..],
            b"foo{}{bar}",
            b"foo{{bar}}zap",
            b"{}",
            b"{a}",
            b"",
        ]
        .map(<[u8]>::to_vec),
    );
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.cmd("CLUSTER").arg("KEYSLOT").arg(k);
    }
    let want: Vec<u16> = pipe.query(&mut con(&cluster.seeds()[0])).expect("KEYSLOT");
    for (k, w) in keys.iter().zip(want) {
        assert_eq!(slot_of(k), w, "{:?}", String::from_utf8_lossy(k));
    }
}

#[test]
fn migration_redirects_and_unsubscribes() {
    let Some(cluster) = RedisCluster::start("migration_redirects_and_unsubscribes") else {
        return;
    };
    let key = b"{room:lobby}:history";
    let channel = b"{room:lobby}:events";
    let slot = slot_of(key);
    assert_eq!(slot, slot_of(channel));
    let t = Topology::discover(&cluster.seeds(), TIMEOUT).unwrap();
    let owner = t.masters()[t.shard_of_key(key).unwrap()].clone();
    assert_eq!(owner, cluster.master_of_slot(slot));
    let mut c = con(&owner);
    redis::cmd("SET")
        .arg(key)
        .arg("v")
        .query::<()>(&mut c)
        .unwrap();

    // SSUBSCRIBE on the owner hears an SPUBLISH.
    let (mut sub, h) = subscriber_on(&owner);
    h.ssubscribe(&[channel]).unwrap();
    assert_eq!(
        next(&mut sub),
        Push::Subscribed {
            channel: channel.to_vec(),
            count: 1
        }
    );
    assert_eq!(spublish(&owner, channel, b"before").unwrap(), 1);
    assert_eq!(
        next(&mut sub),
        Push::Message {
            channel: channel.to_vec(),
            payload: b"before".to_vec()
        }
    );

    // The slot moves: the subscriber is told, the old owner redirects, rediscovery follows.
    let to = t.masters().iter().find(|m| **m != owner).unwrap().clone();
    let t0 = Instant::now();
    cluster.migrate_slot(slot, &to);
    eprintln!("slot {slot} migrated {owner} -> {to} in {:?}", t0.elapsed());
    assert_eq!(
        next(&mut sub),
        Push::Unsubscribed {
            channel: channel.to_vec(),
            count: 0
        }
    );
    let e = redis::cmd("GET")
        .arg(key)
        .query::<Option<String>>(&mut c)
        .expect_err("MOVED");
    assert_eq!(
        redirect_of(&e),
        Some(Redirect::Moved {
            slot,
            addr: to.clone()
        }),
        "{e}"
    );
    // So does SSUBSCRIBE on the old owner, as a Push::Error.
    h.ssubscribe(&[channel]).unwrap();
    match next(&mut sub) {
        Push::Error(line) => assert_eq!(
            super::slots::parse_redirect(&line),
            Some(Redirect::Moved {
                slot,
                addr: to.clone()
            }),
            "{line}"
        ),
        other => panic!("not an error: {other:?}"),
    }
    let t2 = Topology::discover(&cluster.seeds(), TIMEOUT).unwrap();
    assert_eq!(t2.masters()[t2.shard_of_key(key).unwrap()], to);
    assert!(t2.covers_all());
    let v: String = redis::cmd("GET").arg(key).query(&mut con(&to)).unwrap();
    assert_eq!(v, "v", "the key moved with its slot");

    // Resubscribed on the new owner, the channel works again.
    let (mut sub2, h2) = subscriber_on(&to);
    h2.ssubscribe(&[channel]).unwrap();
    assert!(matches!(next(&mut sub2), Push::Subscribed { .. }));
    assert_eq!(spublish(&to, channel, b"after").unwrap(), 1);
    assert_eq!(
        next(&mut sub2),
        Push::Message {
            channel: channel.to_vec(),
            payload: b"after".to_vec()
        }
    );
}

#[test]
fn failover_promotes_the_replica_and_discover_follows() {
    let Some(mut cluster) =
        RedisCluster::start("failover_promotes_the_replica_and_discover_follows")
    else {
        return;
    };
    let key = b"{room:lobby}:history";
    let slot = slot_of(key);
    let before = Topology::discover(&cluster.seeds(), TIMEOUT).unwrap();
    let shard = before.shard_of_slot(slot).unwrap();
    let replica = before.replicas(shard).to_vec();
    assert_eq!(replica.len(), 1);
    // A subscriber on the replica: it keeps hearing the shard's SPUBLISH after the failover.
    let channel = b"{room:lobby}:events";
    let (mut sub, h) = subscriber_on(&replica[0]);
    h.ssubscribe(&[channel]).unwrap();
    assert!(matches!(next(&mut sub), Push::Subscribed { .. }));

    let f = cluster.kill_master_of(slot);
    eprintln!("failover {} -> {} in {:?}", f.old, f.new, f.took);
    assert_eq!(f.new, replica[0], "the only replica is promoted");
    let after = Topology::discover(&cluster.seeds(), TIMEOUT).unwrap();
    assert_eq!(after.masters()[after.shard_of_slot(slot).unwrap()], f.new);
    assert!(after.covers_all());
    assert!(!after.masters().contains(&f.old));
    // The promoted node serves the slot; the subscriber on it hears a publish there.
    assert_eq!(spublish(&f.new, channel, b"after").unwrap(), 1);
    assert_eq!(
        next(&mut sub),
        Push::Message {
            channel: channel.to_vec(),
            payload: b"after".to_vec()
        }
    );
    // The other shards never stopped serving.
    for (i, m) in after.masters().iter().enumerate() {
        if i != after.shard_of_slot(slot).unwrap() {
            redis::cmd("PING").query::<String>(&mut con(m)).unwrap();
        }
    }
}
