//! The Lua scripts, and how they are run: every write to Redis, and the image read, is one script,
//! so that it is atomic.
//!
//! Each script is its own file in `scripts/`, whose header says what it does, its KEYS and ARGV and
//! what it returns. What Redis runs is `prelude.lua` (helpers) followed by that body, sent by SHA-1
//! with `EVALSHA`, in full with `EVAL` when Redis lacks it. Which thread runs which script, and
//! when, is left to `commands` and `feed`.

use redis::{Connection, RedisError, RedisResult, Value};

// What each script does, its KEYS and ARGV: the header of its file.

/// Helpers shared by the scripts (each script is this prelude plus its body).
const PRELUDE: &str = include_str!("scripts/prelude.lua");
const JOIN: &str = include_str!("scripts/join.lua");
const LEAVE: &str = include_str!("scripts/leave.lua");
const POST: &str = include_str!("scripts/post.lua");
const GLOBAL: &str = include_str!("scripts/global.lua");
const HEARTBEAT_SWEEP: &str = include_str!("scripts/heartbeat_sweep.lua");
const SYNC: &str = include_str!("scripts/sync.lua");
const BYE: &str = include_str!("scripts/bye.lua");
const IMAGE: &str = include_str!("scripts/image.lua");

/// A script: its full source and SHA-1 (for `EVALSHA`).
pub(super) struct Script {
    pub(super) source: String,
    sha: String,
}

impl Script {
    fn new(body: &str) -> Script {
        let source = format!("{PRELUDE}{body}");
        let sha = sha1_smol::Sha1::from(source.as_bytes())
            .digest()
            .to_string();
        Script { source, sha }
    }

    /// The `EVALSHA` command; [`eval`] falls back to `EVAL` when Redis lacks the script.
    pub(super) fn cmd(&self) -> redis::Cmd {
        let mut c = redis::cmd("EVALSHA");
        c.arg(&self.sha).arg(0);
        c
    }
}

pub(super) fn is_noscript(e: &RedisError) -> bool {
    e.code() == Some("NOSCRIPT")
}

/// Runs `script` with `args`, loading it first if Redis does not have it (a restarted Redis).
pub(super) fn eval<A: redis::ToRedisArgs>(
    con: &mut Connection,
    script: &Script,
    args: A,
) -> RedisResult<Value> {
    let mut c = script.cmd();
    c.arg(&args);
    match c.query(con) {
        Err(e) if is_noscript(&e) => redis::cmd("EVAL")
            .arg(&script.source)
            .arg(0)
            .arg(args)
            .query(con),
        other => other,
    }
}

pub(super) struct Scripts {
    pub(super) join: Script,
    pub(super) leave: Script,
    pub(super) post: Script,
    pub(super) global: Script,
    pub(super) heartbeat: Script,
    pub(super) sync: Script,
    pub(super) bye: Script,
    pub(super) image: Script,
}

impl Scripts {
    pub(super) fn get() -> &'static Scripts {
        static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
        SCRIPTS.get_or_init(|| Scripts {
            join: Script::new(JOIN),
            leave: Script::new(LEAVE),
            post: Script::new(POST),
            global: Script::new(GLOBAL),
            heartbeat: Script::new(HEARTBEAT_SWEEP),
            sync: Script::new(SYNC),
            bye: Script::new(BYE),
            image: Script::new(IMAGE),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prelude_ends_with_a_newline() {
        // A script is the prelude and its body pasted together: without the newline, the body's
        // first line would end the prelude's last.
        assert!(PRELUDE.ends_with('\n'));
    }
}
