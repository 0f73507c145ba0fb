//! Chat scenarios through the public API, with a fake `now` and no sockets.
//!
//! Over 700 lines on purpose: one scenario per rule of SPEC §3–§4 and per budget, all driving the
//! same few entry points; splitting them would scatter the helpers they share.

use std::net::IpAddr;

use serde_json::{json, Value};

use super::*;

const S: Micros = MICROS_PER_SEC;
/// 2026-11-21T10:00:00Z, a round start time.
const T0: Micros = 1_795_255_200 * S;
const TTL_S: u64 = 60;
const TTL: Micros = TTL_S * S;

fn chat() -> Chat {
    chat_with(1000, None)
}

fn chat_with(history_max: usize, rate_limit: Option<RateLimit>) -> Chat {
    Chat::new(
        ChatConfig {
            rate_limit,
            history_max,
            ..config()
        },
        0x5eed,
    )
}

/// The defaults of the options, for a test to change what it is about.
fn config() -> ChatConfig {
    ChatConfig {
        ttl_secs: TTL_S,
        history_max: 1000,
        history_max_bytes: 64 << 20,
        welcome_history_bytes: 256 << 10,
        rate_limit: None,
        rate_limit_per_ip: None,
    }
}

/// The address every test member connects from, unless the test is about addresses.
const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Live rooms and retained messages.
fn sizes(c: &Chat) -> (usize, usize) {
    let counts = c.counts();
    (counts.rooms, counts.history_messages)
}

/// Event text, from a `String` (welcome, error) or an [`EventFrame`] (room events).
trait Text {
    fn as_text(&self) -> &str;
}

impl Text for str {
    fn as_text(&self) -> &str {
        self
    }
}

impl Text for String {
    fn as_text(&self) -> &str {
        self
    }
}

impl Text for EventFrame {
    fn as_text(&self) -> &str {
        self.text()
    }
}

fn parse<T: Text + ?Sized>(s: &T) -> Value {
    let s = s.as_text();
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn join(c: &mut Chat, room: &str, client: &str, m: u64, now: Micros) -> Joined {
    c.join(room, client, MemberId(m), IP, Resume::default(), now)
}

fn resume(c: &mut Chat, m: u64, since: Option<u64>, epoch: Option<&str>, now: Micros) -> Value {
    let j = c.join("r", "x", MemberId(m), IP, Resume { since, epoch }, now);
    let w = parse(&j.welcome);
    c.leave(j.key, MemberId(m), now);
    w
}

/// Posts and returns the message event, panicking on any other outcome.
fn say(c: &mut Chat, key: RoomKey, m: u64, text: &str, now: Micros) -> Value {
    match c.post(key, MemberId(m), text, now) {
        Post::Broadcast { event, .. } => parse(&event),
        other => panic!("{text:?}: {other:?}"),
    }
}

fn history_ids(welcome: &Value) -> Vec<u64> {
    welcome["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

fn error_code(p: &Post) -> &str {
    match p {
        Post::Reply { error } => {
            let v = parse(error);
            assert_eq!(v["type"], "error");
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
            match v["code"].as_str().unwrap() {
                "rate_limited" => "rate_limited",
                "bad_request" => "bad_request",
                other => panic!("unexpected code {other}"),
            }
        }
        other => panic!("not a reply: {other:?}"),
    }
}

#[test]
fn welcome_and_join_shapes() {
    let mut c = chat();
    let a = join(&mut c, "lobby", "alice", 1, T0);
    assert_eq!(a.name, "alice");
    let w = parse(&a.welcome);
    let epoch = w["epoch"].as_str().unwrap().to_owned();
    assert!(!epoch.is_empty());
    assert_eq!(
        w,
        json!({"type": "welcome", "room_id": "lobby", "client_id": "alice", "users": ["alice"],
               "history": [], "ttl_s": 60, "epoch": epoch, "recovered": true})
    );
    assert_eq!(
        parse(&a.join_event),
        json!({"type": "join", "room_id": "lobby", "client_id": "alice",
               "timestamp": "2026-11-21T10:00:00.000000Z"})
    );

    let m = say(&mut c, a.key, 1, "hello", T0 + 5);
    let b = join(&mut c, "lobby", "bob", 2, T0 + 7);
    let w = parse(&b.welcome);
    assert_eq!(w["users"], json!(["alice", "bob"]));
    assert_eq!(w["history"], json!([m]));
    assert_eq!(w["epoch"], epoch.as_str());
    assert_eq!(b.key, a.key);
    assert_eq!(c.room_members(a.key), [MemberId(1), MemberId(2)]);
    assert_eq!(c.room_id(a.key), Some("lobby"));
}

#[test]
fn message_shape_and_ids() {
    let mut c = chat();
    let a = join(&mut c, "r", "alice", 1, T0);
    let m1 = say(&mut c, a.key, 1, "  hi  ", T0 + 123_456);
    assert_eq!(
        m1,
        json!({"type": "message", "id": 1, "room_id": "r", "client_id": "alice", "content": "hi",
               "timestamp": "2026-11-21T10:00:00.123456Z"})
    );
    let m2 = say(&mut c, a.key, 1, "again", T0 + 200_000);
    assert_eq!(m2["id"], 2);
    // Another room has its own sequence.
    let b = join(&mut c, "other", "bob", 2, T0);
    assert_eq!(say(&mut c, b.key, 2, "x", T0)["id"], 1);
}

#[test]
fn user_text_is_escaped() {
    let mut c = chat();
    let nasty = "\"}<script>\u{1}\\ \u{2028}";
    let a = join(&mut c, "r\"", nasty, 1, T0);
    let w = parse(&a.welcome);
    assert_eq!(w["room_id"], "r\"");
    let m = say(&mut c, a.key, 1, nasty, T0);
    assert_eq!(m["content"], nasty.trim());
    assert_eq!(m["client_id"], a.name.as_str());
}

#[test]
fn content_rules() {
    let mut c = chat();
    let a = join(&mut c, "r", "a", 1, T0);
    let content = |c: &mut Chat, text: &str| say(c, a.key, 1, text, T0)["content"].clone();
    assert_eq!(content(&mut c, r#"{"content": " hi "}"#), "hi");
    assert_eq!(content(&mut c, r#"{"content":"x","extra":[1]}"#), "x");
    assert_eq!(content(&mut c, r#"{"content":"\u00e9\n"}"#), "é");
    assert_eq!(content(&mut c, "plain text"), "plain text");
    // JSON that is not an object is the content itself, as sent.
    assert_eq!(content(&mut c, "[1, 2]"), "[1, 2]");
    assert_eq!(content(&mut c, "\"quoted\""), "\"quoted\"");
    assert_eq!(content(&mut c, "42"), "42");
    assert_eq!(content(&mut c, "null"), "null");
    // Not JSON at all, even though it starts with a brace.
    assert_eq!(content(&mut c, "{hello}"), "{hello}");
    assert_eq!(
        content(&mut c, r#"{"content":"x"} trailing"#),
        r#"{"content":"x"} trailing"#
    );

    for bad in [
        "{}",
        r#"{"text":"hi"}"#,
        r#"{"content":5}"#,
        r#"{"content":null}"#,
        r#"{"content":["x"]}"#,
        r#" {"content":{}}"#,
        r#"{"content":"a","content":"b"}"#,
    ] {
        let p = c.post(a.key, MemberId(1), bad, T0);
        assert_eq!(error_code(&p), "bad_request", "{bad}");
    }

    for empty in [
        "",
        "   ",
        "\n\t",
        r#"{"content":"  "}"#,
        r#"{"content":""}"#,
    ] {
        assert_eq!(
            c.post(a.key, MemberId(1), empty, T0),
            Post::Ignored,
            "{empty:?}"
        );
    }
    // Refused and ignored messages use no id.
    assert_eq!(say(&mut c, a.key, 1, "next", T0)["id"], 11);
}

#[test]
fn posts_from_strangers_and_stale_keys_are_ignored() {
    let mut c = chat();
    let a = join(&mut c, "r", "a", 1, T0);
    assert_eq!(c.post(a.key, MemberId(9), "hi", T0), Post::Ignored);
    c.leave(a.key, MemberId(1), T0);
    assert_eq!(c.post(a.key, MemberId(1), "hi", T0), Post::Ignored);
    assert!(c.room_members(a.key).is_empty());
    assert_eq!(c.room_id(a.key), None);
    assert_eq!(c.expire_room(a.key, T0 + TTL), None);
    assert_eq!(c.leave(a.key, MemberId(1), T0), None);
}

#[test]
fn names_are_cleaned_and_deduplicated() {
    let mut c = chat();
    // Segments arrive decoded: no second decoding here.
    let a = join(&mut c, "  lobby ", " alice\u{7} ", 1, T0);
    assert_eq!(a.name, "alice");
    assert_eq!(parse(&a.welcome)["room_id"], "lobby");
    assert_eq!(join(&mut c, "lobby", "alice", 2, T0).name, "alice#2");
    assert_eq!(join(&mut c, "lobby", "alice", 3, T0).name, "alice#3");
    assert_eq!(join(&mut c, "lobby", "%41lice", 4, T0).name, "%41lice");
    let k = a.key;
    assert_eq!(
        parse(&c.leave(k, MemberId(2), T0).unwrap())["client_id"],
        "alice#2"
    );
    let again = join(&mut c, "lobby", "alice", 5, T0);
    assert_eq!(again.name, "alice#2");
    assert_eq!(
        parse(&again.welcome)["users"],
        json!(["alice", "alice#3", "%41lice", "alice#2"])
    );
    assert_eq!(parse(&again.join_event)["client_id"], "alice#2");

    // Defaults and the 64-character cut (suffix may go past it).
    let d = join(&mut c, "", "/", 6, T0);
    assert_eq!(
        (d.name.as_str(), c.room_id(d.key)),
        ("anonymous", Some("general"))
    );
    let long = "é".repeat(70);
    let l1 = join(&mut c, "x", &long, 7, T0);
    let l2 = join(&mut c, "x", &long, 8, T0);
    assert_eq!(l1.name, "é".repeat(64));
    assert_eq!(l2.name, format!("{}#2", "é".repeat(64)));
}

#[test]
fn leave_event_and_freeing() {
    let mut c = chat();
    let a = join(&mut c, "r", "alice", 1, T0);
    join(&mut c, "r", "bob", 2, T0);
    let ev = c.leave(a.key, MemberId(1), T0 + S).unwrap();
    assert_eq!(
        parse(&ev),
        json!({"type": "leave", "room_id": "r", "client_id": "alice",
               "timestamp": "2026-11-21T10:00:01.000000Z"})
    );
    assert_eq!(
        c.leave(a.key, MemberId(1), T0),
        None,
        "not a member any more"
    );
    assert_eq!(c.room_members(a.key), [MemberId(2)]);
    // Last one out of a room without messages: nobody to tell, room freed.
    assert_eq!(c.leave(a.key, MemberId(2), T0), None);
    assert_eq!(c.counts().rooms, 0);
    assert_eq!(c.room_id(a.key), None);
}

#[test]
fn room_with_messages_outlives_its_members_then_gets_a_new_epoch() {
    let mut c = chat();
    let a = join(&mut c, "r", "alice", 1, T0);
    let epoch1 = parse(&a.welcome)["epoch"].as_str().unwrap().to_owned();
    let Post::Broadcast { arm_expiry, .. } = c.post(a.key, MemberId(1), "hi", T0) else {
        panic!()
    };
    assert_eq!(arm_expiry, Some(T0 + TTL));
    assert_eq!(c.leave(a.key, MemberId(1), T0), None);
    assert_eq!(sizes(&c), (1, 1));

    // The room is kept for its message; a rejoin sees the same epoch and history.
    let b = join(&mut c, "r", "bob", 2, T0 + S);
    let w = parse(&b.welcome);
    assert_eq!(
        (w["epoch"].as_str().unwrap(), history_ids(&w)),
        (epoch1.as_str(), vec![1])
    );
    assert_eq!(b.key, a.key);
    c.leave(b.key, MemberId(2), T0 + S);

    assert_eq!(
        c.expire_room(a.key, T0 + TTL - 1),
        Some(T0 + TTL),
        "early timer"
    );
    assert_eq!(c.counts().rooms, 1);
    assert_eq!(c.expire_room(a.key, T0 + TTL), None);
    assert_eq!(sizes(&c), (0, 0));
    assert_eq!(c.counts().history_bytes, 0);
    assert_eq!(c.expired_total(), 1);
    assert!(c.room_members(a.key).is_empty());

    // Same name again: a new room, new epoch, ids from 1, and the old key stays stale.
    let n = join(&mut c, "r", "carol", 3, T0 + TTL + 1);
    let w = parse(&n.welcome);
    assert_ne!(w["epoch"].as_str().unwrap(), epoch1);
    assert_ne!(n.key, a.key);
    assert_eq!(say(&mut c, n.key, 3, "fresh", T0 + TTL + 2)["id"], 1);
    assert!(c.room_members(a.key).is_empty());
    assert_eq!(
        c.expire_room(a.key, T0 + 10 * TTL),
        None,
        "stale timer is a no-op"
    );
    assert_eq!(c.counts().history_messages, 1);
}

#[test]
fn epochs_differ_between_daemons() {
    let mut c1 = chat();
    let mut c2 = Chat::new(
        ChatConfig {
            history_max: 10,
            ..config()
        },
        0xface,
    );
    let e1 = parse(&join(&mut c1, "r", "a", 1, T0).welcome)["epoch"].clone();
    let e2 = parse(&join(&mut c2, "r", "a", 1, T0).welcome)["epoch"].clone();
    assert_ne!(e1, e2);
}

#[test]
fn expiry_and_timer_rescheduling() {
    let mut c = chat();
    let a = join(&mut c, "r", "a", 1, T0);
    let arm = |p: Post| match p {
        Post::Broadcast { arm_expiry, .. } => arm_expiry,
        other => panic!("{other:?}"),
    };
    assert_eq!(arm(c.post(a.key, MemberId(1), "1", T0)), Some(T0 + TTL));
    assert_eq!(
        arm(c.post(a.key, MemberId(1), "2", T0 + 10 * S)),
        None,
        "one timer per history"
    );
    assert_eq!(arm(c.post(a.key, MemberId(1), "3", T0 + 20 * S)), None);

    // Not expired 1 µs before the TTL, gone at it; the next due time follows.
    let at = |c: &Chat, now| {
        history_ids_of(
            &parse(&c.room_messages_json("r", None, None, now)),
            "messages",
        )
    };
    assert_eq!(at(&c, T0 + TTL - 1), [1, 2, 3]);
    assert_eq!(
        at(&c, T0 + TTL),
        [2, 3],
        "views hide it before the timer runs"
    );
    assert_eq!(c.expire_room(a.key, T0 + TTL), Some(T0 + 10 * S + TTL));
    // A late timer removes everything due at once.
    assert_eq!(c.expire_room(a.key, T0 + 25 * S + TTL), None);
    assert_eq!(c.expired_total(), 3);
    assert_eq!(sizes(&c), (1, 0), "a is still in it");
    // Empty again: the next post arms a timer again.
    assert_eq!(
        arm(c.post(a.key, MemberId(1), "4", T0 + 2 * TTL)),
        Some(T0 + 3 * TTL)
    );
}

fn history_ids_of(v: &Value, key: &str) -> Vec<u64> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn history_max_drops_oldest() {
    let mut c = chat_with(3, None);
    let a = join(&mut c, "r", "a", 1, T0);
    for i in 0..5 {
        say(&mut c, a.key, 1, &format!("m{i}"), T0 + i);
    }
    let v = parse(&c.room_messages_json("r", None, None, T0 + 10));
    assert_eq!(history_ids_of(&v, "messages"), [3, 4, 5]);
    assert_eq!(c.counts().history_messages, 3);
    assert_eq!(c.expired_total(), 0, "drops by history_max are not expiry");
    // Only one timer for the history, still due for the first message: firing early is harmless.
    assert_eq!(c.expire_room(a.key, T0 + TTL), Some(T0 + 2 + TTL));
}

#[test]
fn history_max_zero_stores_nothing_but_still_broadcasts() {
    let mut c = chat_with(0, None);
    let a = join(&mut c, "r", "a", 1, T0);
    match c.post(a.key, MemberId(1), "hi", T0) {
        Post::Broadcast { event, arm_expiry } => {
            assert_eq!(parse(&event)["id"], 1);
            assert_eq!(arm_expiry, None);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.counts().history_messages, 0);
    assert_eq!(c.leave(a.key, MemberId(1), T0), None);
    assert_eq!(c.counts().rooms, 0);
    assert!(matches!(
        c.global_post(MemberId(1), "x", T0),
        GlobalPost::Broadcast {
            arm_expiry: None,
            ..
        }
    ));
}

/// A room "r" with messages 1..=5 posted at T0 + 0..4 s by member 100, who stays.
fn five_messages(history_max: usize) -> (Chat, String) {
    let mut c = chat_with(history_max, None);
    let a = join(&mut c, "r", "keeper", 100, T0);
    for i in 0..5 {
        say(&mut c, a.key, 100, &format!("m{}", i + 1), T0 + i * S);
    }
    let epoch = parse(&a.welcome)["epoch"].as_str().unwrap().to_owned();
    (c, epoch)
}

#[test]
fn recovery_table() {
    let (mut c, e) = five_messages(1000);
    let now = T0 + 10 * S;
    let late = T0 + S + TTL; // ids 1 and 2 expired (no timer run)
    let got = |w: Value| (history_ids(&w), w["recovered"].as_bool().unwrap());
    // No since: the whole unexpired history, recovered.
    assert_eq!(
        got(resume(&mut c, 1, None, None, now)),
        (vec![1, 2, 3, 4, 5], true)
    );
    // An epoch that is not the room's wins, even without a `since` (absent, or not a number).
    assert_eq!(
        got(resume(&mut c, 1, None, Some("other"), now)),
        (vec![1, 2, 3, 4, 5], false)
    );
    assert_eq!(
        got(resume(&mut c, 1, None, Some(&e), now)),
        (vec![1, 2, 3, 4, 5], true)
    );
    assert_eq!(
        got(resume(&mut c, 1, None, None, late)),
        (vec![3, 4, 5], true)
    );
    // Since without epoch: filtered by id, recovered unless something after since is gone.
    assert_eq!(
        got(resume(&mut c, 1, Some(3), None, now)),
        (vec![4, 5], true)
    );
    assert_eq!(got(resume(&mut c, 1, Some(5), None, now)), (vec![], true));
    assert_eq!(
        got(resume(&mut c, 1, Some(2), None, late)),
        (vec![3, 4, 5], true)
    );
    assert_eq!(
        got(resume(&mut c, 1, Some(1), None, late)),
        (vec![3, 4, 5], false)
    );
    // Since with another epoch: whole history, not recovered.
    assert_eq!(
        got(resume(&mut c, 1, Some(3), Some("other"), now)),
        (vec![1, 2, 3, 4, 5], false)
    );
    assert_eq!(
        got(resume(&mut c, 1, Some(5), Some("other"), now)),
        (vec![1, 2, 3, 4, 5], false)
    );
    // Same epoch: filtered and recovered, or the whole history and not recovered on a gap.
    assert_eq!(
        got(resume(&mut c, 1, Some(3), Some(&e), now)),
        (vec![4, 5], true)
    );
    assert_eq!(
        got(resume(&mut c, 1, Some(2), Some(&e), late)),
        (vec![3, 4, 5], true)
    );
    assert_eq!(
        got(resume(&mut c, 1, Some(0), Some(&e), late)),
        (vec![3, 4, 5], false)
    );
    // Everything expired: whatever was missed is gone.
    let all_gone = T0 + 4 * S + TTL;
    assert_eq!(
        got(resume(&mut c, 1, Some(4), Some(&e), all_gone)),
        (vec![], false)
    );
    assert_eq!(
        got(resume(&mut c, 1, Some(5), Some(&e), all_gone)),
        (vec![], true)
    );
}

#[test]
fn recovery_gap_by_history_max() {
    let (mut c, e) = five_messages(2); // keeps ids 4 and 5
    let now = T0 + 10 * S;
    let got = |w: Value| (history_ids(&w), w["recovered"].as_bool().unwrap());
    assert_eq!(
        got(resume(&mut c, 1, Some(3), Some(&e), now)),
        (vec![4, 5], true)
    );
    assert_eq!(
        got(resume(&mut c, 1, Some(2), Some(&e), now)),
        (vec![4, 5], false)
    );
    assert_eq!(
        got(resume(&mut c, 1, Some(2), None, now)),
        (vec![4, 5], false)
    );
    assert_eq!(
        got(resume(&mut c, 1, Some(3), None, now)),
        (vec![4, 5], true)
    );
}

#[test]
fn recovery_into_a_restarted_room() {
    // The room was freed (or the daemon restarted): an old epoch gets recovered: false.
    let mut c = chat();
    let w = resume(&mut c, 1, Some(7), Some("old-epoch"), T0);
    assert_eq!(
        (history_ids(&w), w["recovered"].clone()),
        (vec![], json!(false))
    );
}

#[test]
fn room_rate_limit_and_refill() {
    let mut c = chat_with(
        100,
        Some(RateLimit {
            tokens: 2,
            per_secs: 10,
        }),
    );
    let a = join(&mut c, "r", "a", 1, T0);
    let b = join(&mut c, "r", "b", 2, T0);
    say(&mut c, a.key, 1, "1", T0);
    say(&mut c, a.key, 1, "2", T0);
    let p = c.post(a.key, MemberId(1), "3", T0);
    assert_eq!(error_code(&p), "rate_limited");
    // Rate limit comes first: even a bad request is refused, silently now that a was told.
    assert_eq!(c.post(a.key, MemberId(1), "{}", T0), Post::Ignored);
    assert_eq!(c.rate_limited_total(), 2);
    // Per member: b still has its tokens.
    say(&mut c, b.key, 2, "b1", T0);
    // One token every 5 s.
    assert_eq!(
        c.post(a.key, MemberId(1), "x", T0 + 5 * S - 1),
        Post::Ignored
    );
    assert_eq!(say(&mut c, a.key, 1, "4", T0 + 5 * S)["id"], 4);
    assert_eq!(
        error_code(&c.post(a.key, MemberId(1), "x", T0 + 5 * S)),
        "rate_limited"
    );
    assert_eq!(c.rate_limited_total(), 4);
    // A new connection (rejoin) starts with a full bucket.
    c.leave(a.key, MemberId(1), T0 + 5 * S);
    let a2 = join(&mut c, "r", "a", 3, T0 + 5 * S);
    say(&mut c, a2.key, 3, "5", T0 + 5 * S);
    say(&mut c, a2.key, 3, "6", T0 + 5 * S);
}

#[test]
fn rate_limit_zero_is_off() {
    for limit in [
        RateLimit {
            tokens: 0,
            per_secs: 60,
        },
        RateLimit {
            tokens: 5,
            per_secs: 0,
        },
    ] {
        let mut c = chat_with(10, Some(limit));
        let a = join(&mut c, "r", "a", 1, T0);
        for _ in 0..50 {
            say(&mut c, a.key, 1, "x", T0);
        }
        assert_eq!(c.rate_limited_total(), 0);
    }
}

#[test]
fn global_channel() {
    let mut c = chat_with(
        3,
        Some(RateLimit {
            tokens: 2,
            per_secs: 60,
        }),
    );
    for m in 1..=4 {
        c.global_join(MemberId(m), IP, T0);
    }
    c.global_leave(MemberId(2));
    c.global_leave(MemberId(2));
    let mut members: Vec<u64> = c.global_members().iter().map(|m| m.0).collect();
    members.sort_unstable();
    assert_eq!(members, [1, 3, 4]);

    assert_eq!(
        broadcast(c.global_post(MemberId(1), "  raw {\"x\"}  ", T0)),
        ("  raw {\"x\"}  ".to_owned(), Some(T0 + TTL))
    );
    assert_eq!(
        broadcast(c.global_post(MemberId(1), "", T0 + 500_000)),
        (String::new(), None)
    );
    match c.global_post(MemberId(1), "too many", T0 + S) {
        GlobalPost::RateLimited { error } => assert_eq!(parse(&error)["code"], "rate_limited"),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.rate_limited_total(), 1);
    // Told once: the next refusals are silent until the bucket admits one again.
    assert_eq!(
        c.global_post(MemberId(1), "still too many", T0 + S),
        GlobalPost::Dropped
    );
    assert_eq!(c.global_admit(MemberId(1), T0 + S), Err(None));
    assert_eq!(c.rate_limited_total(), 3);
    // Texts are kept exactly as sent (no trimming, no JSON), with Unix-seconds timestamps.
    assert_eq!(
        parse(&c.messages_json(None, T0 + S)),
        json!({"messages": [
            {"message": "  raw {\"x\"}  ", "timestamp": 1_795_255_200.0},
            {"message": "", "timestamp": 1_795_255_200.5},
        ]})
    );
    c.global_post(MemberId(3), "c1", T0 + 2 * S);
    c.global_post(MemberId(3), "c2", T0 + 3 * S); // history_max 3: the first is dropped
    let texts = |c: &Chat, now| -> Vec<String> {
        parse(&c.messages_json(None, now))["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["message"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(texts(&c, T0 + 3 * S), ["", "c1", "c2"]);
    assert_eq!(c.counts().history_messages, 3);
    assert_eq!(
        texts(&c, T0 + 2 * S + TTL),
        ["c2"],
        "hidden before the timer runs"
    );
    assert_eq!(
        c.expire_global(T0 + TTL),
        Some(T0 + 500_000 + TTL),
        "early timer"
    );
    assert_eq!(c.expire_global(T0 + 2 * S + TTL), Some(T0 + 3 * S + TTL));
    assert_eq!(c.expire_global(T0 + 3 * S + TTL), None);
    assert_eq!(c.expired_total(), 3);
    assert_eq!(c.counts().history_messages, 0);
    assert_eq!(parse(&c.messages_json(None, T0)), json!({"messages": []}));
    // Empty again: the next post arms the timer again.
    assert_eq!(
        broadcast(c.global_post(MemberId(4), "again", T0 + 2 * TTL)),
        ("again".to_owned(), Some(T0 + 3 * TTL))
    );
}

/// The text sent to everyone and the timer to arm, from a global post that must be broadcast.
fn broadcast(post: GlobalPost) -> (String, Option<Micros>) {
    match post {
        GlobalPost::Broadcast { frame, arm_expiry } => (frame.text().to_owned(), arm_expiry),
        other => panic!("{other:?}"),
    }
}

#[test]
fn global_members_scale() {
    let mut c = chat();
    for m in 0..10_000 {
        c.global_join(MemberId(m), IP, T0);
    }
    for m in (0..10_000).step_by(2) {
        c.global_leave(MemberId(m));
    }
    assert_eq!(c.global_members().len(), 5_000);
    assert!(c.global_members().iter().all(|m| m.0 % 2 == 1));
}

#[test]
fn rooms_view() {
    let mut c = chat();
    assert_eq!(parse(&c.rooms_json(T0)), json!({"rooms": []}));
    let b = join(&mut c, "beta", "x", 1, T0);
    join(&mut c, "beta", "y", 2, T0);
    let a = join(&mut c, "alpha", "z", 3, T0);
    say(&mut c, a.key, 3, "one", T0);
    say(&mut c, a.key, 3, "two", T0 + S);
    c.leave(a.key, MemberId(3), T0 + S); // alpha: nobody, 2 messages
    let e = join(&mut c, "empty", "w", 4, T0);
    c.leave(e.key, MemberId(4), T0); // freed at once
    say(&mut c, b.key, 1, "b", T0);
    assert_eq!(
        parse(&c.rooms_json(T0 + 2 * S)),
        json!({"rooms": [
            {"room_id": "alpha", "users": 0, "messages": 2},
            {"room_id": "beta", "users": 2, "messages": 1},
        ]})
    );
    // Expired messages are not counted, and a room with nothing left is not listed.
    assert_eq!(
        parse(&c.rooms_json(T0 + S + TTL)),
        json!({"rooms": [{"room_id": "beta", "users": 2, "messages": 0}]})
    );
    assert_eq!(sizes(&c), (2, 3));
}

#[test]
fn room_messages_view() {
    let (c, _) = five_messages(1000);
    let v = parse(&c.room_messages_json("r", None, None, T0 + 10 * S));
    assert_eq!(
        (v["room_id"].clone(), v["ttl_s"].clone()),
        (json!("r"), json!(60))
    );
    assert_eq!(history_ids_of(&v, "messages"), [1, 2, 3, 4, 5]);
    let first = &v["messages"][0];
    assert_eq!(
        *first,
        json!({"type": "message", "id": 1, "room_id": "r", "client_id": "keeper", "content": "m1",
               "timestamp": "2026-11-21T10:00:00.000000Z"})
    );
    let v = parse(&c.room_messages_json(" r\u{0} ", Some(3), None, T0 + 10 * S));
    assert_eq!(history_ids_of(&v, "messages"), [4, 5]);
    let v = parse(&c.room_messages_json("r", Some(1), None, T0 + S + TTL));
    assert_eq!(history_ids_of(&v, "messages"), [3, 4, 5]);
    assert_eq!(
        parse(&c.room_messages_json("nobody/", Some(1), None, T0)),
        json!({"room_id": "nobody", "ttl_s": 60, "messages": []})
    );
    assert_eq!(
        parse(&c.room_messages_json("", None, None, T0)),
        json!({"room_id": "general", "ttl_s": 60, "messages": []})
    );
}

#[test]
fn wall_clock_stepping_back_keeps_history_ordered() {
    let mut c = chat();
    let a = join(&mut c, "r", "a", 1, T0);
    say(&mut c, a.key, 1, "1", T0 + 10 * S);
    let m = say(&mut c, a.key, 1, "2", T0); // clock went back 10 s
    assert_eq!(m["timestamp"], "2026-11-21T10:00:10.000000Z");
    assert_eq!(c.expire_room(a.key, T0 + 10 * S + TTL), None);
}

#[test]
fn big_room_join_leave() {
    let mut c = chat();
    let first = join(&mut c, "big", "u", 0, T0);
    for m in 1..2_000 {
        join(&mut c, "big", "u", m, T0);
    }
    for m in (0..2_000).step_by(3) {
        c.leave(first.key, MemberId(m), T0);
    }
    let members = c.room_members(first.key);
    assert_eq!(members.len(), 2_000 - 667);
    assert!(
        members.windows(2).all(|w| w[0].0 < w[1].0),
        "join order kept"
    );
    // Freed suffixes are reused smallest first.
    assert_eq!(join(&mut c, "big", "u", 5_000, T0).name, "u");
    assert_eq!(join(&mut c, "big", "u", 5_001, T0).name, "u#4");
}

// --- budgets: --history-max-bytes, welcome and catch-up, views, rate-limit answers, addresses

/// What every history really holds, counted as `--history-max-bytes` counts it, checked against
/// the gauges; returns the bytes.
fn held_bytes(c: &Chat) -> usize {
    let mut messages = c.global_history.len();
    let mut bytes: usize = c
        .global_history
        .starting_at(0)
        .map(|e| e.item.buffer_len())
        .sum();
    for r in c.rooms.iter() {
        messages += r.history.timeline.len();
        bytes += r
            .history
            .timeline
            .starting_at(0)
            .map(|e| e.item.event.buffer_len())
            .sum::<usize>();
    }
    assert_eq!(c.counts().history_messages, messages, "messages gauge");
    assert_eq!(c.counts().history_bytes, bytes, "bytes gauge");
    bytes
}

fn chat_budget(history_max_bytes: usize) -> Chat {
    Chat::new(
        ChatConfig {
            history_max_bytes,
            ..config()
        },
        0x5eed,
    )
}

/// Room message text whose frame lands in the pool's 256-byte class.
fn text_256() -> String {
    "x".repeat(100)
}

fn room_ids(c: &Chat, room: &str) -> Vec<u64> {
    history_ids_of(
        &parse(&c.room_messages_json(room, None, None, T0 + S)),
        "messages",
    )
}

#[test]
fn budget_drops_the_oldest_across_every_history() {
    // Eight 256-byte frames fit.
    let mut c = chat_budget(8 * 256);
    let a = join(&mut c, "a", "x", 1, T0);
    let b = join(&mut c, "b", "y", 2, T0);
    c.global_join(MemberId(3), IP, T0);
    let mut t = T0;
    for _ in 0..5 {
        for (key, m) in [(a.key, 1), (b.key, 2)] {
            t += 1;
            say(&mut c, key, m, &text_256(), t);
            held_bytes(&c);
        }
    }
    // Ten posted, eight held: a1 and b1, the oldest, went.
    assert_eq!(room_ids(&c, "a"), [2, 3, 4, 5]);
    assert_eq!(room_ids(&c, "b"), [2, 3, 4, 5]);
    assert_eq!(held_bytes(&c), 8 * 256);
    assert_eq!(c.history_dropped_total(), 2);
    assert_eq!(c.expired_total(), 0, "dropped early, not expired");
    // A global message pushes out the oldest room message, whichever room.
    t += 1;
    c.global_post(MemberId(3), &"g".repeat(200), t);
    assert_eq!(room_ids(&c, "a"), [3, 4, 5]);
    assert_eq!(room_ids(&c, "b"), [2, 3, 4, 5]);
    // The next ones push out b2, a3, b3, a4, b4, a5, b5, and then the global one.
    for _ in 0..7 {
        t += 1;
        say(&mut c, b.key, 2, &text_256(), t);
    }
    assert_eq!(room_ids(&c, "a"), Vec::<u64>::new());
    assert_eq!(
        parse(&c.messages_json(None, t))["messages"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    t += 1;
    say(&mut c, b.key, 2, &text_256(), t);
    assert_eq!(parse(&c.messages_json(None, t))["messages"], json!([]));
    assert_eq!(room_ids(&c, "b"), (6..=13).collect::<Vec<u64>>());
    assert_eq!(held_bytes(&c), 8 * 256);
    assert_eq!(c.history_dropped_total(), 2 + 1 + 8);
}

#[test]
fn recovery_after_a_budget_drop_says_false() {
    let mut c = chat_budget(4 * 256);
    let a = join(&mut c, "r", "x", 1, T0);
    let epoch = parse(&a.welcome)["epoch"].as_str().unwrap().to_owned();
    for i in 0..6 {
        say(&mut c, a.key, 1, &text_256(), T0 + i);
    }
    assert_eq!(room_ids(&c, "r"), [3, 4, 5, 6]);
    let got = |w: Value| (history_ids(&w), w["recovered"].as_bool().unwrap());
    assert_eq!(
        got(resume(&mut c, 9, Some(1), Some(&epoch), T0 + S)),
        (vec![3, 4, 5, 6], false),
        "id 2 was dropped for the budget"
    );
    assert_eq!(
        got(resume(&mut c, 9, Some(1), None, T0 + S)),
        (vec![3, 4, 5, 6], false)
    );
    assert_eq!(
        got(resume(&mut c, 9, Some(2), Some(&epoch), T0 + S)),
        (vec![3, 4, 5, 6], true)
    );
}

#[test]
fn a_message_larger_than_the_budget_is_kept_alone() {
    let mut c = chat_budget(1024);
    let a = join(&mut c, "r", "x", 1, T0);
    say(&mut c, a.key, 1, "small", T0);
    say(&mut c, a.key, 1, &"y".repeat(3000), T0 + 1);
    assert_eq!(room_ids(&c, "r"), [2]);
    assert!(held_bytes(&c) > 1024);
    // The next message, small, pushes it out.
    say(&mut c, a.key, 1, "small again", T0 + 2);
    assert_eq!(room_ids(&c, "r"), [3]);
    assert!(held_bytes(&c) <= 1024);
}

#[test]
fn budget_counts_escaped_bytes_and_skips_what_left_otherwise() {
    // --history-max 2 leaves references to dropped messages in the order; the budget skips them.
    let mut c = Chat::new(
        ChatConfig {
            history_max: 2,
            history_max_bytes: 3 * 512,
            ..config()
        },
        1,
    );
    let a = join(&mut c, "a", "x", 1, T0);
    let b = join(&mut c, "b", "y", 2, T0);
    // 60 control characters: 360 bytes escaped, a 512-byte frame.
    let controls = "\u{1}".repeat(60);
    for i in 0..10 {
        say(&mut c, a.key, 1, &format!("a{controls}"), T0 + i);
        held_bytes(&c);
    }
    assert_eq!(held_bytes(&c), 2 * 512);
    say(&mut c, b.key, 2, &format!("b{controls}"), T0 + 20);
    say(&mut c, b.key, 2, &format!("b{controls}"), T0 + 21);
    assert_eq!(room_ids(&c, "a"), [10]);
    assert_eq!(room_ids(&c, "b"), [1, 2]);
    assert_eq!(c.history_dropped_total(), 1);
    // The order does not keep a reference per message ever posted.
    assert!(c.order.len() <= 16, "{}", c.order.len());
    // An expired message the timer has not removed yet leaves as expired, not as dropped.
    let d = join(&mut c, "d", "z", 3, T0);
    say(&mut c, d.key, 3, &format!("d{controls}"), T0 + 10 + TTL);
    assert_eq!(room_ids(&c, "a"), Vec::<u64>::new());
    assert_eq!((c.history_dropped_total(), c.expired_total()), (1, 1));
    held_bytes(&c);
}

#[test]
fn a_history_emptied_by_the_budget_keeps_its_one_timer() {
    let mut c = chat_budget(2 * 256);
    let a = join(&mut c, "a", "x", 1, T0);
    let b = join(&mut c, "b", "y", 2, T0);
    let arm = |p: Post| match p {
        Post::Broadcast { arm_expiry, .. } => arm_expiry,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        arm(c.post(a.key, MemberId(1), &text_256(), T0)),
        Some(T0 + TTL)
    );
    assert_eq!(
        arm(c.post(b.key, MemberId(2), &text_256(), T0 + S)),
        Some(T0 + S + TTL)
    );
    // b's second message pushes a's only one out: a is empty, its timer still pending.
    arm(c.post(b.key, MemberId(2), &text_256(), T0 + 2 * S));
    assert_eq!(room_ids(&c, "a"), Vec::<u64>::new());
    // So a's next message asks for no second timer; the pending one finds it and re-arms.
    assert_eq!(arm(c.post(a.key, MemberId(1), "hi", T0 + 3 * S)), None);
    assert_eq!(c.expire_room(a.key, T0 + TTL), Some(T0 + 3 * S + TTL));
    // A room emptied by the budget with nobody in it is freed by its timer.
    c.leave(a.key, MemberId(1), T0 + 4 * S);
    for i in 0..2 {
        say(&mut c, b.key, 2, &text_256(), T0 + 5 * S + i);
    }
    assert_eq!(c.counts().rooms, 2);
    assert_eq!(c.expire_room(a.key, T0 + 3 * S + TTL), None);
    assert_eq!(c.counts().rooms, 1);
}

#[test]
fn one_rate_limited_error_per_refill() {
    let mut c = chat_with(
        100,
        Some(RateLimit {
            tokens: 1,
            per_secs: 10,
        }),
    );
    let a = join(&mut c, "r", "a", 1, T0);
    say(&mut c, a.key, 1, "1", T0);
    let mut errors = 0;
    for i in 0..10_000 {
        match c.post(a.key, MemberId(1), "x", T0 + i) {
            Post::Reply { .. } => errors += 1,
            Post::Ignored => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(errors, 1, "a flood gets one error, not one per message");
    assert_eq!(c.rate_limited_total(), 10_000, "every refusal is counted");
    // The bucket admits one again at 10 s; the next refusal is told again.
    say(&mut c, a.key, 1, "2", T0 + 10 * S);
    assert_eq!(
        error_code(&c.post(a.key, MemberId(1), "x", T0 + 10 * S)),
        "rate_limited"
    );
    assert_eq!(c.post(a.key, MemberId(1), "x", T0 + 10 * S), Post::Ignored);
}

#[test]
fn reconnecting_does_not_refill_the_address_bucket() {
    let mut c = Chat::new(
        ChatConfig {
            rate_limit: Some(RateLimit {
                tokens: 100,
                per_secs: 60,
            }),
            rate_limit_per_ip: Some(RateLimit {
                tokens: 3,
                per_secs: 60,
            }),
            ..config()
        },
        1,
    );
    let home: IpAddr = "192.0.2.1".parse().unwrap();
    let other: IpAddr = "2001:db8::1".parse().unwrap();
    let j = c.join("r", "a", MemberId(1), home, Resume::default(), T0);
    for i in 0..3 {
        say(&mut c, j.key, 1, &format!("{i}"), T0);
    }
    let p = c.post(j.key, MemberId(1), "4", T0);
    assert_eq!(error_code(&p), "rate_limited");
    let Post::Reply { error } = p else {
        unreachable!()
    };
    assert!(error.contains("from one address"), "{error}");
    // Leave and come back from the same address: a new connection bucket, the same address bucket.
    c.leave(j.key, MemberId(1), T0 + S);
    let j = c.join("r", "a", MemberId(2), home, Resume::default(), T0 + S);
    assert_eq!(c.post(j.key, MemberId(2), "again", T0 + S), Post::Ignored);
    // On the global channel too.
    c.global_join(MemberId(3), home, T0 + S);
    assert_eq!(c.global_post(MemberId(3), "g", T0 + S), GlobalPost::Dropped);
    // Another address has its own bucket.
    let o = c.join("r", "b", MemberId(4), other, Resume::default(), T0 + S);
    say(&mut c, o.key, 4, "mine", T0 + S);
    c.global_join(MemberId(5), other, T0 + S);
    assert!(matches!(
        c.global_post(MemberId(5), "g", T0 + S),
        GlobalPost::Broadcast { .. }
    ));
    // One token every 20 s for the address.
    say(&mut c, j.key, 2, "refilled", T0 + 20 * S);
    assert_eq!(c.rate_limited_total(), 3);
    assert_eq!(c.addresses.len(), 2);
    // Buckets full again are forgotten: the map holds the addresses of recent senders only.
    c.expire_room(j.key, T0 + 10 * 60 * S);
    assert_eq!(c.addresses.len(), 0);
}

/// A room "r" with `n` messages of ~200 bytes of text each, posted by member 100 at T0 + i µs.
fn long_room(welcome_history_bytes: usize, n: u64) -> (Chat, Vec<EventFrame>) {
    let mut c = Chat::new(
        ChatConfig {
            welcome_history_bytes,
            ..config()
        },
        1,
    );
    let a = join(&mut c, "r", "keeper", 100, T0);
    let mut sent = Vec::new();
    for i in 0..n {
        match c.post(
            a.key,
            MemberId(100),
            &format!("{i:03}{}", "z".repeat(100)),
            T0 + i,
        ) {
            Post::Broadcast { event, .. } => sent.push(event),
            other => panic!("{other:?}"),
        }
    }
    (c, sent)
}

#[test]
fn welcome_is_cut_at_its_budget_and_catch_up_brings_the_rest_in_order() {
    let (mut c, sent) = long_room(1000, 40);
    let len = sent[0].text_len() + 1;
    let j = c.join("r", "late", MemberId(1), IP, Resume::default(), T0 + S);
    let w = parse(&j.welcome);
    let in_welcome = history_ids(&w);
    assert_eq!(in_welcome.len(), 1000 / len, "the oldest that fit");
    assert_eq!(
        in_welcome,
        (1..=in_welcome.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(w["history_complete"], false);
    assert_eq!(w["recovered"], true);
    assert_eq!(j.catch_up, in_welcome.last().copied());

    let mut got = in_welcome.clone();
    let mut after = j.catch_up;
    let mut rounds = 0;
    while let Some(id) = after {
        let part = c.catch_up(j.key, id, 700, T0 + S);
        assert!(!part.frames.is_empty());
        let bytes: usize = part.frames.iter().map(|f| f.frame().len()).sum();
        assert!(part.frames.len() == 1 || bytes <= 700);
        for f in &part.frames {
            let id = parse(f).get("id").unwrap().as_u64().unwrap();
            // The history's own frame, shared: not encoded again.
            assert_eq!(f.frame().as_ptr(), sent[id as usize - 1].frame().as_ptr());
            got.push(id);
        }
        after = part.next;
        rounds += 1;
    }
    assert_eq!(
        got,
        (1..=40).collect::<Vec<_>>(),
        "every message once, in order"
    );
    assert!(rounds > 1);

    // A frame larger than the batch still goes, alone.
    let part = c.catch_up(j.key, 0, 10, T0 + S);
    assert_eq!((part.frames.len(), part.next), (1, Some(1)));
    // Nothing after the last, or a stale key: nothing.
    assert!(c.catch_up(j.key, 40, 700, T0 + S).frames.is_empty());
    // Expired meanwhile: skipped, the client hides them anyway.
    let part = c.catch_up(j.key, 0, 1 << 20, T0 + 20 + TTL);
    assert_eq!(
        parse(&part.frames[0])["id"],
        22,
        "ids 1 to 21, posted until T0 + 20 µs, expired"
    );
    assert_eq!(part.next, None);
}

#[test]
fn welcome_cut_after_since_and_complete_when_it_fits() {
    let (mut c, _) = long_room(1000, 40);
    let epoch = parse(&join(&mut c, "r", "x", 1, T0 + S).welcome)["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let j = c.join(
        "r",
        "y",
        MemberId(2),
        IP,
        Resume {
            since: Some(30),
            epoch: Some(&epoch),
        },
        T0 + S,
    );
    let w = parse(&j.welcome);
    assert_eq!(history_ids(&w)[0], 31);
    assert_eq!(w["history_complete"], false);
    let rest = c.catch_up(j.key, j.catch_up.unwrap(), 1 << 20, T0 + S);
    assert_eq!(parse(rest.frames.last().unwrap())["id"], 40);

    // A history within the budget: complete, and the field is left out.
    let (mut c, _) = long_room(256 << 10, 40);
    let j = c.join("r", "z", MemberId(3), IP, Resume::default(), T0 + S);
    let w = parse(&j.welcome);
    assert_eq!(history_ids(&w).len(), 40);
    assert!(w.get("history_complete").is_none());
    assert_eq!(j.catch_up, None);
}

#[test]
fn history_views_are_paged() {
    let mut c = chat_with(2000, None);
    let a = join(&mut c, "r", "a", 1, T0);
    for i in 0..1500 {
        say(&mut c, a.key, 1, &format!("m{i}"), T0 + i);
    }
    let now = T0 + S;
    let v = parse(&c.room_messages_json("r", None, None, now));
    let ids = history_ids_of(&v, "messages");
    assert_eq!(
        (ids.len(), ids[0], v["more"].clone()),
        (1000, 1, json!(true))
    );
    let v = parse(&c.room_messages_json("r", Some(1000), None, now));
    let ids = history_ids_of(&v, "messages");
    assert_eq!((ids.len(), ids[0]), (500, 1001));
    assert!(v.get("more").is_none(), "the last page says nothing");
    let v = parse(&c.room_messages_json("r", Some(10), Some(5), now));
    assert_eq!(history_ids_of(&v, "messages"), [11, 12, 13, 14, 15]);
    assert_eq!(v["more"], true);
    let v = parse(&c.room_messages_json("r", None, Some(0), now));
    assert_eq!(history_ids_of(&v, "messages"), [1], "at least one");
    let v = parse(&c.room_messages_json("r", None, Some(1 << 40), now));
    assert_eq!(
        history_ids_of(&v, "messages").len(),
        1000,
        "at most the maximum"
    );

    // Large escaped messages: the body stays under the byte cap, at least one message.
    let controls = "\u{1}".repeat(60_000); // 360 KB escaped
    let b = join(&mut c, "big", "b", 2, T0);
    for _ in 0..5 {
        say(&mut c, b.key, 2, &controls, T0);
    }
    let body = c.room_messages_json("big", None, None, now);
    assert!(body.len() <= HISTORY_PAGE_BYTES, "{}", body.len());
    let v = parse(&body);
    assert_eq!(
        (history_ids_of(&v, "messages"), v["more"].clone()),
        (vec![1, 2], json!(true))
    );
    let v = parse(&c.room_messages_json("big", Some(4), None, now));
    assert_eq!(history_ids_of(&v, "messages"), [5]);
    let huge = join(&mut c, "huge", "h", 3, T0);
    say(&mut c, huge.key, 3, &"\u{1}".repeat(200_000), T0);
    let v = parse(&c.room_messages_json("huge", None, None, now));
    assert_eq!(
        history_ids_of(&v, "messages"),
        [1],
        "one message over the cap still goes"
    );
}

#[test]
fn global_view_shows_the_newest_that_fit() {
    let mut c = chat_with(2000, None);
    c.global_join(MemberId(1), IP, T0);
    for i in 0..1200 {
        c.global_post(MemberId(1), &format!("m{i}"), T0 + i);
    }
    let texts = |v: &Value| -> Vec<String> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["message"].as_str().unwrap().to_owned())
            .collect()
    };
    let v = parse(&c.messages_json(None, T0 + S));
    let t = texts(&v);
    assert_eq!(
        (t.len(), t[0].as_str(), t[999].as_str()),
        (1000, "m200", "m1199")
    );
    assert_eq!(v["more"], true);
    let v = parse(&c.messages_json(Some(2), T0 + S));
    assert_eq!(texts(&v), ["m1198", "m1199"]);

    // Control characters weigh six bytes each in the answer: five of these do not fit in 1 MiB.
    let mut c = chat_with(2000, None);
    c.global_join(MemberId(1), IP, T0);
    for i in 0..5 {
        c.global_post(
            MemberId(1),
            &format!("{i}{}", "\u{1}".repeat(60_000)),
            T0 + i,
        );
    }
    let body = c.messages_json(None, T0 + S);
    assert!(body.len() <= HISTORY_PAGE_BYTES, "{}", body.len());
    let v = parse(&body);
    let firsts: Vec<char> = texts(&v)
        .iter()
        .map(|t| t.chars().next().unwrap())
        .collect();
    assert_eq!(firsts, ['3', '4'], "the newest, oldest first");
    assert_eq!(v["more"], true);
    let v = parse(&c.messages_json(None, T0 + 4 + TTL));
    assert!(v.get("more").is_none(), "expired ones are not 'more'");
    assert_eq!(v["messages"], json!([]));
}

#[test]
fn format_characters_are_removed_from_names() {
    let mut c = chat();
    // The HTTP layer decodes `alice%E2%80%8B` into this.
    let a = join(&mut c, "lobby\u{200E}", "alice\u{200B}", 1, T0);
    assert_eq!(a.name, "alice");
    assert_eq!(c.room_id(a.key), Some("lobby"));
    let b = join(&mut c, "lobby", "\u{202E}alice\u{FEFF}", 2, T0);
    assert_eq!(b.name, "alice#2");
    let d = join(&mut c, "\u{200B}", "\u{2060}\u{AD}", 3, T0);
    assert_eq!(
        (d.name.as_str(), c.room_id(d.key)),
        ("anonymous", Some("general"))
    );
    assert_eq!(
        history_ids_of(
            &parse(&c.room_messages_json("lob\u{200D}by", None, None, T0)),
            "messages"
        ),
        Vec::<u64>::new()
    );
    assert_eq!(
        parse(&c.room_messages_json("lob\u{200D}by", None, None, T0))["room_id"],
        "lobby"
    );
}

// --- `--compat fastapi`

fn compat_chat() -> Chat {
    Chat::new(config(), 0x5eed).with_vocabulary(Vocabulary::FastApi)
}

#[test]
fn compat_join_and_leave_are_a_system_line_and_the_presence_list() {
    let mut c = compat_chat();
    let a = join(&mut c, "lobby", "alice", 1, T0);
    assert_eq!(
        a.welcome, "",
        "no welcome: the rooms client would draw it as an empty card"
    );
    let b = join(&mut c, "lobby", "alice", 2, T0 + 123_456);
    let [line, list] = c
        .compat_presence(b.key, Presence::Join, &b.name, T0 + 123_456)
        .unwrap();
    assert_eq!(
        parse(&line),
        json!({"type": "system", "room_id": "lobby", "client_id": "system",
               "content": "alice#2 joined lobby.", "timestamp": "2026-11-21T10:00:00.123456+00:00"})
    );
    assert_eq!(
        parse(&list),
        json!({"type": "presence", "users": ["alice", "alice#2"],
               "timestamp": "2026-11-21T10:00:00.123456+00:00"})
    );
    c.leave(b.key, MemberId(2), T0 + S);
    let [line, list] = c
        .compat_presence(b.key, Presence::Leave, "alice#2", T0 + S)
        .unwrap();
    assert_eq!(parse(&line)["content"], "alice#2 left lobby.");
    assert_eq!(parse(&line)["timestamp"], "2026-11-21T10:00:01+00:00");
    assert_eq!(parse(&list)["users"], json!(["alice"]));
}

#[test]
fn compat_content_is_pythons_str_of_content() {
    let mut c = compat_chat();
    let a = join(&mut c, "r", "alice", 1, T0);
    let content = |c: &mut Chat, text: &str| match c.post(a.key, MemberId(1), text, T0) {
        Post::Broadcast { event, .. } => {
            Some(parse(&event)["content"].as_str().unwrap().to_owned())
        }
        Post::Reply { error } => panic!("no error in this mode, got {error} for {text}"),
        Post::Ignored => None,
    };
    for (text, want) in [
        (r#"{"content":" hi "}"#, Some("hi")),
        (r#"{"content":7}"#, Some("7")),
        (r#"{"content":1.5}"#, Some("1.5")),
        (r#"{"content":null}"#, Some("None")),
        (r#"{"content":false}"#, Some("False")),
        (r#"{"content":["a",1]}"#, Some(r#"["a",1]"#)),
        (r#"{"content":"a","content":"b"}"#, Some("b")),
        (r#"{"other":1}"#, None),
        (r#"{"content":"  "}"#, None),
        (r#""quoted""#, Some(r#""quoted""#)),
        ("{not json}", Some("{not json}")),
        ("plain", Some("plain")),
    ] {
        assert_eq!(content(&mut c, text).as_deref(), want, "{text}");
    }
    let Post::Broadcast { event, .. } = c.post(a.key, MemberId(1), "x", T0 + 5) else {
        panic!("not posted");
    };
    assert_eq!(
        parse(&event)["timestamp"],
        "2026-11-21T10:00:00.000005+00:00"
    );
}

#[test]
fn compat_rate_limit_error_carries_its_text_as_content() {
    let mut c = Chat::new(
        ChatConfig {
            rate_limit: Some(RateLimit {
                tokens: 1,
                per_secs: 60,
            }),
            ..config()
        },
        1,
    )
    .with_vocabulary(Vocabulary::FastApi);
    let a = join(&mut c, "r", "alice", 1, T0);
    assert!(matches!(
        c.post(a.key, MemberId(1), "one", T0),
        Post::Broadcast { .. }
    ));
    let Post::Reply { error } = c.post(a.key, MemberId(1), "two", T0) else {
        panic!("not refused");
    };
    let e = parse(&error);
    assert_eq!(
        (e["type"].as_str(), e["client_id"].as_str()),
        (Some("error"), Some("system"))
    );
    assert_eq!(e["content"], e["message"]);
    assert!(e["content"]
        .as_str()
        .unwrap()
        .starts_with("rate limit exceeded"));
}

#[test]
fn demo_channel_lines() {
    let mut c = compat_chat();
    c.demo_join(MemberId(1), IP, "1700000000001", T0);
    c.demo_join(MemberId(2), IP, "", T0);
    let DemoPost::Broadcast { own, all } = c.demo_post(MemberId(1), " hi ", T0) else {
        panic!("not posted");
    };
    assert_eq!(own, "You wrote:  hi ");
    assert_eq!(all.text(), "Client #1700000000001 says:  hi ");
    assert_eq!(c.demo_members().len(), 2);
    let gone = c.demo_leave(MemberId(2)).unwrap();
    assert_eq!(gone.text(), "Client #anonymous left the chat");
    assert!(c.demo_leave(MemberId(1)).is_none(), "nobody left to tell");
    assert!(c.demo_members().is_empty());
}

// --- typing signals

#[test]
fn typing_is_relayed_at_most_every_interval_and_never_stored() {
    let mut c = chat_with(
        1000,
        Some(RateLimit {
            tokens: 1,
            per_secs: 60,
        }),
    );
    let a = join(&mut c, "r", "alice", 1, T0);
    join(&mut c, "r", "bob", 2, T0);
    let signal = r#"{"type":"typing"}"#;
    let event = c.typing(a.key, MemberId(1), signal, T0).unwrap().unwrap();
    assert_eq!(
        parse(&event),
        json!({"type": "typing", "room_id": "r", "client_id": "alice",
               "timestamp": "2026-11-21T10:00:00.000000Z"})
    );
    // Within the interval: dropped and counted; after it: relayed again.
    assert_eq!(c.typing(a.key, MemberId(1), signal, T0 + S).unwrap(), None);
    assert!(c
        .typing(a.key, MemberId(1), signal, T0 + TYPING_INTERVAL)
        .unwrap()
        .is_some());
    assert_eq!((c.typing_total(), c.typing_limited_total()), (2, 1));
    // Not a chat message: nothing stored, and the chat rate limit (1 message) is untouched.
    assert_eq!(sizes(&c).1, 0);
    assert!(matches!(
        c.post(a.key, MemberId(1), "hi", T0),
        Post::Broadcast { .. }
    ));
    // What is not a typing signal is left to `post`.
    for text in [
        r#"{"type":"typing","content":"x"}"#,
        "typing",
        r#"{"content":"typing"}"#,
    ] {
        assert_eq!(c.typing(a.key, MemberId(1), text, T0), None, "{text}");
    }
    // The seed rooms app has no such event.
    let mut compat = compat_chat();
    let k = join(&mut compat, "r", "alice", 1, T0).key;
    assert_eq!(compat.typing(k, MemberId(1), signal, T0), None);
}

// --- one presence per person

#[test]
fn two_tabs_of_one_person_are_one_entry_and_leave_once() {
    let mut c = chat();
    let tab = |c: &mut Chat, name: &str, token: Option<&str>, m: u64| {
        c.join_with_token("r", name, token, MemberId(m), IP, Resume::default(), T0)
    };
    let a1 = tab(&mut c, "alice", Some("tok-a"), 1);
    assert!(a1.announce);
    tab(&mut c, "bob", Some("tok-b"), 2);
    let a2 = tab(&mut c, "alice", Some("tok-a"), 3);
    assert_eq!(a2.name, "alice", "the same person keeps the name");
    assert!(!a2.announce, "nobody is told about a second tab");
    assert_eq!(parse(&a2.welcome)["users"], json!(["alice", "bob"]));
    // Another browser (another token, or none) asking for the name is someone else.
    let other = tab(&mut c, "alice", Some("tok-x"), 4);
    assert_eq!((other.name.as_str(), other.announce), ("alice#2", true));
    let none = tab(&mut c, "alice", None, 5);
    assert_eq!(none.name, "alice#3");
    assert_eq!(
        c.rooms_json(T0),
        r#"{"rooms":[{"room_id":"r","users":4,"messages":0}]}"#
    );
    // Closing the first tab says nothing (the second takes its place); closing the last one
    // announces the leave.
    assert!(c.leave(a1.key, MemberId(1), T0).is_none());
    let users = |c: &Chat| {
        c.rooms
            .get(a1.key)
            .unwrap()
            .users()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // The second tab, which joined before alice#2, holds the place now.
    assert_eq!(users(&c), ["bob", "alice", "alice#2", "alice#3"]);
    let left = c
        .leave(a1.key, MemberId(3), T0)
        .expect("the last tab's leave");
    assert_eq!(parse(&left)["client_id"], "alice");
    // The name is free again.
    assert_eq!(tab(&mut c, "alice", None, 6).name, "alice");
    // A second tab closing first says nothing either.
    let b2 = tab(&mut c, "bob", Some("tok-b"), 7);
    assert!(!b2.announce);
    assert!(c.leave(b2.key, MemberId(7), T0).is_none());
    assert!(c.leave(b2.key, MemberId(2), T0).is_some());
}
