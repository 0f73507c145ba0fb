//! Chat scenarios through the public API, with a fake `now` and no sockets.

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
            ttl_secs: TTL_S,
            history_max,
            rate_limit,
        },
        0x5eed,
    )
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
    c.join(room, client, MemberId(m), Resume::default(), now)
}

fn resume(c: &mut Chat, m: u64, since: Option<u64>, epoch: Option<&str>, now: Micros) -> Value {
    let j = c.join("r", "x", MemberId(m), Resume { since, epoch }, now);
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
    assert_eq!(
        c.counts(),
        Counts {
            rooms: 1,
            history_messages: 1
        }
    );

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
    assert_eq!(
        c.counts(),
        Counts {
            rooms: 0,
            history_messages: 0
        }
    );
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
            ttl_secs: TTL_S,
            history_max: 10,
            rate_limit: None,
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
    let at =
        |c: &Chat, now| history_ids_of(&parse(&c.room_messages_json("r", None, now)), "messages");
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
    assert_eq!(
        c.counts(),
        Counts {
            rooms: 1,
            history_messages: 0
        },
        "a is still in it"
    );
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
    let v = parse(&c.room_messages_json("r", None, T0 + 10));
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
    // Rate limit comes first: even a bad request or empty text costs a token and is refused.
    assert_eq!(
        error_code(&c.post(a.key, MemberId(1), "{}", T0)),
        "rate_limited"
    );
    assert_eq!(c.rate_limited_total(), 2);
    // Per member: b still has its tokens.
    say(&mut c, b.key, 2, "b1", T0);
    // One token every 5 s.
    assert_eq!(
        error_code(&c.post(a.key, MemberId(1), "x", T0 + 5 * S - 1)),
        "rate_limited"
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
        c.global_join(MemberId(m), T0);
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
    // Texts are kept exactly as sent (no trimming, no JSON), with Unix-seconds timestamps.
    assert_eq!(
        parse(&c.messages_json(T0 + S)),
        json!({"messages": [
            {"message": "  raw {\"x\"}  ", "timestamp": 1_795_255_200.0},
            {"message": "", "timestamp": 1_795_255_200.5},
        ]})
    );
    c.global_post(MemberId(3), "c1", T0 + 2 * S);
    c.global_post(MemberId(3), "c2", T0 + 3 * S); // history_max 3: the first is dropped
    let texts = |c: &Chat, now| -> Vec<String> {
        parse(&c.messages_json(now))["messages"]
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
    assert_eq!(parse(&c.messages_json(T0)), json!({"messages": []}));
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
        c.global_join(MemberId(m), T0);
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
    assert_eq!(
        c.counts(),
        Counts {
            rooms: 2,
            history_messages: 3
        }
    );
}

#[test]
fn room_messages_view() {
    let (c, _) = five_messages(1000);
    let v = parse(&c.room_messages_json("r", None, T0 + 10 * S));
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
    let v = parse(&c.room_messages_json(" r\u{0} ", Some(3), T0 + 10 * S));
    assert_eq!(history_ids_of(&v, "messages"), [4, 5]);
    let v = parse(&c.room_messages_json("r", Some(1), T0 + S + TTL));
    assert_eq!(history_ids_of(&v, "messages"), [3, 4, 5]);
    assert_eq!(
        parse(&c.room_messages_json("nobody/", Some(1), T0)),
        json!({"room_id": "nobody", "ttl_s": 60, "messages": []})
    );
    assert_eq!(
        parse(&c.room_messages_json("", None, T0)),
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
