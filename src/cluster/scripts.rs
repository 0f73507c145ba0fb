//! The Lua scripts, and how they are run: every write to Redis, and every image read, is one
//! script, so that it is atomic.
//!
//! Each script is its own file in `scripts/`, whose header says what it does, its KEYS and ARGV and
//! what it returns. What Redis runs is `prelude.lua` (helpers) followed by that body, sent by SHA-1
//! with `EVALSHA`, in full with `EVAL` when Redis lacks it. Every key a script touches is declared
//! (`keys`), as a Redis Cluster requires. Which thread runs which script, and when, is left to
//! `commands` and `feed`.

use redis::{Connection, RedisError, RedisResult, Value};

// What each script does, its KEYS and ARGV: the header of its file.

/// Helpers shared by the scripts (each script is this prelude plus its body).
const PRELUDE: &str = include_str!("scripts/prelude.lua");

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

    /// `EVALSHA sha numkeys keys...`: the ARGV go after. [`eval`] falls back to `EVAL` when Redis
    /// lacks the script; a pipeline loads them all ([`load_all`]) and tries again.
    pub(super) fn call<K: AsRef<str>>(&self, keys: &[K]) -> redis::Cmd {
        let mut c = redis::cmd("EVALSHA");
        c.arg(&self.sha).arg(keys.len());
        for k in keys {
            c.arg(k.as_ref());
        }
        c
    }
}

pub(super) fn is_noscript(e: &RedisError) -> bool {
    e.code() == Some("NOSCRIPT")
}

/// Runs `script` with `keys` and `args`, loading it first if Redis does not have it (a restarted
/// Redis).
pub(super) fn eval<K: AsRef<str>, A: redis::ToRedisArgs>(
    con: &mut Connection,
    script: &Script,
    keys: &[K],
    args: A,
) -> RedisResult<Value> {
    let mut c = script.call(keys);
    c.arg(&args);
    match c.query(con) {
        Err(e) if is_noscript(&e) => {
            let mut c = redis::cmd("EVAL");
            c.arg(&script.source).arg(keys.len());
            for k in keys {
                c.arg(k.as_ref());
            }
            c.arg(args).query(con)
        }
        other => other,
    }
}

/// Loads every script into the Redis behind `con` (after a `NOSCRIPT` in a pipeline).
pub(super) fn load_all(con: &mut Connection) -> RedisResult<()> {
    for script in Scripts::get().all() {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(&script.source)
            .query::<Value>(con)?;
    }
    Ok(())
}

pub(super) struct Scripts {
    pub(super) join: Script,
    pub(super) leave: Script,
    pub(super) post: Script,
    pub(super) global: Script,
    pub(super) heartbeat: Script,
    pub(super) sweep: Script,
    pub(super) rebase: Script,
    pub(super) sync: Script,
    pub(super) image: Script,
    pub(super) global_image: Script,
}

impl Scripts {
    pub(super) fn get() -> &'static Scripts {
        static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
        SCRIPTS.get_or_init(|| Scripts {
            join: Script::new(include_str!("scripts/join.lua")),
            leave: Script::new(include_str!("scripts/leave.lua")),
            post: Script::new(include_str!("scripts/post.lua")),
            global: Script::new(include_str!("scripts/global.lua")),
            heartbeat: Script::new(include_str!("scripts/heartbeat.lua")),
            sweep: Script::new(include_str!("scripts/sweep.lua")),
            rebase: Script::new(include_str!("scripts/rebase.lua")),
            sync: Script::new(include_str!("scripts/sync.lua")),
            image: Script::new(include_str!("scripts/image.lua")),
            global_image: Script::new(include_str!("scripts/global_image.lua")),
        })
    }

    fn all(&self) -> [&Script; 10] {
        [
            &self.join,
            &self.leave,
            &self.post,
            &self.global,
            &self.heartbeat,
            &self.sweep,
            &self.rebase,
            &self.sync,
            &self.image,
            &self.global_image,
        ]
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
