//! A real Redis Cluster (`tests/common/redis_cluster.rs`): the harness itself, and the Redis 7.0
//! behaviours in cluster mode that the bridge's design relies on (issue 14): how Lua scripts may
//! touch keys and shard channels, where `PUBLISH`/`SPUBLISH` from a script reach, what a slot
//! migration and a failover look like from outside.
//!
//! Slot routing and the sharded subscriber are crate-private; their tests against this same
//! harness are in `src/cluster/redis_tests.rs`. Without `redis-server`/`redis-cli` each test
//! prints a notice and passes.

#[path = "common/redis_cluster.rs"]
mod redis_cluster;

use std::time::{Duration, Instant};

use redis::{Connection, RedisError, RedisResult, Value};

use redis_cluster::{con, poll, RedisCluster};

/// Keys for the script experiments: `a1` and `a2` on one master in two different slots, `b` on
/// another master.
struct Keys {
    master_a: String,
    master_b: String,
    a1: String,
    a2: String,
    b: String,
}

fn keys(cluster: &RedisCluster) -> Keys {
    let masters = cluster.masters();
    let (master_a, master_b) = (masters[0].clone(), masters[1].clone());
    let (mut a1, mut a2, mut b) = (None::<(String, u16)>, None::<String>, None::<String>);
    for i in 0.. {
        let k = format!("k{i}");
        let slot = cluster.keyslot(k.as_bytes());
        let owner = cluster.master_of_slot(slot);
        if owner == master_a {
            match &a1 {
                None => a1 = Some((k, slot)),
                Some((_, s)) if a2.is_none() && *s != slot => a2 = Some(k),
                _ => {}
            }
        } else if owner == master_b && b.is_none() {
            b = Some(k);
        }
        if a2.is_some() && b.is_some() {
            break;
        }
    }
    Keys {
        master_a,
        master_b,
        a1: a1.unwrap().0,
        a2: a2.unwrap(),
        b: b.unwrap(),
    }
}

fn eval(c: &mut Connection, script: &str, keys: &[&str]) -> RedisResult<Value> {
    redis::cmd("EVAL")
        .arg(script)
        .arg(keys.len())
        .arg(keys)
        .query(c)
}

fn assert_err_contains(r: RedisResult<Value>, code: &str, text: &str) -> RedisError {
    let e = r.expect_err(text);
    assert_eq!(e.code(), Some(code), "{e}");
    assert!(e.to_string().contains(text), "{e}");
    e
}

#[test]
fn the_cluster_starts_converged_and_fast() {
    let Some(cluster) = RedisCluster::start("the_cluster_starts_converged_and_fast") else {
        return;
    };
    eprintln!("cluster started in {:?}", cluster.started_in);
    let slots = cluster.slots();
    assert_eq!(slots.len(), 3);
    assert_eq!((slots[0].start, slots[2].end), (0, 16383));
    for w in slots.windows(2) {
        assert_eq!(w[0].end + 1, w[1].start);
    }
    for r in &slots {
        assert_eq!(r.replicas.len(), 1, "{r:?}");
        // The replica is in sync: a write is acknowledged by it.
        let key = (0..)
            .map(|i| format!("probe{i}"))
            .find(|k| (r.start..=r.end).contains(&cluster.keyslot(k.as_bytes())))
            .unwrap();
        let mut c = con(&r.master);
        redis::cmd("SET")
            .arg(&key)
            .arg(1)
            .query::<()>(&mut c)
            .unwrap();
        let acked: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut c).unwrap();
        assert_eq!(acked, 1, "{r:?}");
    }
    assert_eq!(cluster.seeds().len(), 6);
    assert!(cluster.dir().exists());
}

#[test]
fn scripts_in_cluster_mode() {
    let Some(cluster) = RedisCluster::start("scripts_in_cluster_mode") else {
        return;
    };
    let k = keys(&cluster);
    let (a1, a2, b) = (k.a1.as_str(), k.a2.as_str(), k.b.as_str());
    let mut a = con(&k.master_a);
    let set = |x: &str| format!("redis.call('set', '{x}', '1')");

    // Plain EVAL, no keys declared: any key of this node works, across slots.
    let both = format!("{}; {}; return 1", set(a1), set(a2));
    assert_eq!(eval(&mut a, &both, &[]).unwrap(), Value::Int(1));
    // A key of another node fails inside the script (an ERR, not a MOVED to follow).
    assert_err_contains(
        eval(&mut a, &format!("{}; return 1", set(b)), &[]),
        "ERR",
        "non local key",
    );
    // Declared keys are routed: one of another node is a MOVED, two slots a CROSSSLOT.
    let e = eval(&mut a, "return 1", &[b]).expect_err("MOVED");
    assert_eq!(e.code(), Some("MOVED"), "{e}");
    assert_err_contains(
        eval(&mut a, "return 1", &[a1, a2]),
        "CROSSSLOT",
        "same slot",
    );
    // An undeclared key of another slot of this node still works next to a declared one.
    let undeclared = format!("redis.call('set', KEYS[1], '1'); {}; return 1", set(a2));
    assert_eq!(eval(&mut a, &undeclared, &[a1]).unwrap(), Value::Int(1));

    // With a shebang (Redis 7 script flags), even without flags: one slot per script, the first
    // key touched fixing it when none is declared.
    let sheb = |body: &str| format!("#!lua\n{body}");
    assert_eq!(
        eval(&mut a, &sheb(&format!("{}; return 1", set(a1))), &[]).unwrap(),
        Value::Int(1)
    );
    assert_err_contains(
        eval(&mut a, &sheb(&both), &[]),
        "ERR",
        "do not hash to the same slot",
    );
    assert_err_contains(
        eval(&mut a, &sheb(&undeclared), &[a1]),
        "ERR",
        "do not hash to the same slot",
    );
    // `allow-cross-slot-keys` gives back the plain EVAL's freedom, still within the node.
    let cross = |body: &str| format!("#!lua flags=allow-cross-slot-keys\n{body}");
    assert_eq!(
        eval(&mut a, &cross(&undeclared), &[a1]).unwrap(),
        Value::Int(1)
    );
    assert_err_contains(
        eval(&mut a, &cross(&format!("{}; return 1", set(b))), &[a1]),
        "ERR",
        "non local key",
    );

    // SPUBLISH in a script is checked like a key: a channel of this node's slots works...
    let spub = |ch: &str| format!("return redis.call('spublish', '{ch}', 'x')");
    assert_eq!(eval(&mut a, &spub(a2), &[a1]).unwrap(), Value::Int(0));
    assert_eq!(eval(&mut a, &spub(a2), &[]).unwrap(), Value::Int(0));
    // ...one of another node does not...
    assert_err_contains(eval(&mut a, &spub(b), &[]), "ERR", "non local key");
    // ...and with a shebang it must be in the script's one slot (a hash tag makes it so).
    assert_err_contains(
        eval(&mut a, &sheb(&spub(a2)), &[a1]),
        "ERR",
        "do not hash to the same slot",
    );
    let tagged = format!("{{{a1}}}:events");
    assert_eq!(
        eval(&mut a, &sheb(&spub(&tagged)), &[a1]).unwrap(),
        Value::Int(0)
    );
}

/// Reads pushes on a subscribed connection until `want` comes, within 5 s.
fn await_push(c: &mut Connection, want: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    loop {
        if let Ok(Value::Array(items)) = c.recv_response() {
            if items.last() == Some(&Value::BulkString(want.to_vec())) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "no push {want:?}");
    }
}

#[test]
fn publish_from_a_script_reaches_the_whole_cluster_spublish_the_shard() {
    let Some(cluster) = RedisCluster::start("publish_from_a_script_reaches_the_whole_cluster")
    else {
        return;
    };
    let k = keys(&cluster);
    let shard = cluster
        .slots()
        .into_iter()
        .find(|r| r.master == k.master_a)
        .unwrap();
    // SUBSCRIBE on another master, SSUBSCRIBE on master A's replica.
    let mut sub = con(&k.master_b);
    redis::cmd("SUBSCRIBE")
        .arg("global")
        .query::<Value>(&mut sub)
        .unwrap();
    let mut ssub = con(&shard.replicas[0]);
    redis::cmd("SSUBSCRIBE")
        .arg(&k.a1)
        .query::<Value>(&mut ssub)
        .unwrap();
    let mut a = con(&k.master_a);
    // PUBLISH from a script counts local receivers only (0 here), yet reaches every node.
    let n = eval(
        &mut a,
        "return redis.call('publish', 'global', 'from-script')",
        &[],
    )
    .unwrap();
    assert_eq!(n, Value::Int(0));
    await_push(&mut sub, b"from-script");
    // SPUBLISH from a script reaches the shard's replicas' subscribers.
    eval(
        &mut a,
        &format!("return redis.call('spublish', '{}', 'shard-msg')", k.a1),
        &[&k.a1],
    )
    .unwrap();
    await_push(&mut ssub, b"shard-msg");
}

#[test]
fn migrate_slot_moves_keys_and_redirects() {
    let Some(cluster) = RedisCluster::start("migrate_slot_moves_keys_and_redirects") else {
        return;
    };
    let slot = cluster.keyslot(b"{m}");
    let from = cluster.master_of_slot(slot);
    let to = cluster.masters().into_iter().find(|m| *m != from).unwrap();
    let mut c = con(&from);
    for i in 0..250 {
        redis::cmd("SET")
            .arg(format!("{{m}}:{i}"))
            .arg(i)
            .query::<()>(&mut c)
            .unwrap();
    }
    let t0 = Instant::now();
    cluster.migrate_slot(slot, &to);
    eprintln!("slot {slot} with 250 keys migrated in {:?}", t0.elapsed());
    for addr in cluster.seeds() {
        let map = cluster.slots_at(&addr).unwrap();
        let r = map
            .iter()
            .find(|r| (r.start..=r.end).contains(&slot))
            .unwrap();
        assert_eq!(r.master, to, "as {addr} sees it");
    }
    let e = redis::cmd("GET")
        .arg("{m}:7")
        .query::<Option<String>>(&mut c)
        .expect_err("MOVED");
    assert_eq!(e.redirect_node(), Some((to.as_str(), slot)));
    let n: i64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot)
        .query(&mut con(&to))
        .unwrap();
    assert_eq!(n, 250);
}

#[test]
fn killing_a_master_promotes_its_replica() {
    let Some(mut cluster) = RedisCluster::start("killing_a_master_promotes_its_replica") else {
        return;
    };
    let slot = cluster.keyslot(b"{f}");
    let replica = cluster
        .slots()
        .into_iter()
        .find(|r| (r.start..=r.end).contains(&slot))
        .unwrap()
        .replicas[0]
        .clone();
    let f = cluster.kill_master_of(slot);
    eprintln!("failover {} -> {} in {:?}", f.old, f.new, f.took);
    assert_eq!(f.new, replica);
    assert!(f.took < Duration::from_secs(15), "{f:?}");
    assert!(!cluster.seeds().contains(&f.old));
    // The promoted master takes writes for the slot; the cluster still covers every slot.
    poll("a write on the new master", || {
        redis::cmd("SET")
            .arg("{f}")
            .arg(1)
            .query::<()>(&mut con(&f.new))
            .ok()
    });
    let covered: u32 = cluster
        .slots()
        .iter()
        .map(|r| u32::from(r.end - r.start) + 1)
        .sum();
    assert_eq!(covered, 16384);
}
