//! `--compat fastapi`: the seed rooms app's presence (`system` lines and `presence` lists) and the
//! FastAPI documentation example's channel `/ws/{client_id}`.

use std::borrow::Cow;
use std::net::IpAddr;

use super::*;

impl Chat {
    /// `--compat fastapi`: how the members of room `key` are told that `name` joined or left: the
    /// seed rooms app's `system` line (`alice joined lobby.`, `alice left lobby.`), then its
    /// `presence` event with everyone now in the room. For every member, the joiner included (the
    /// app broadcasts to the whole room). `None` for a stale key.
    ///
    /// The `presence` list is as long as the room: filling a room of N costs O(N²) bytes on the
    /// wire (docs/benchmarks.md, "Compatibility mode").
    pub fn compat_presence(
        &mut self,
        key: RoomKey,
        kind: Presence,
        name: &str,
        now: Micros,
    ) -> Option<[EventFrame; 2]> {
        let room = self.rooms.get(key)?;
        let verb = match kind {
            Presence::Join => "joined",
            Presence::Leave => "left",
        };
        let line = events::system(
            &mut self.frames,
            &room.name,
            &format!("{name} {verb} {}.", room.name),
            now,
        );
        let list = events::presence_list(&mut self.frames, room.users(), now);
        Some([line, list])
    }

    /// `--compat fastapi`: `m`, connected from `ip`, joins the FastAPI example channel
    /// `/ws/{client_id}` as `client` (an already decoded path segment, cleaned like a client name;
    /// not de-duplicated: the example's ids are timestamps).
    pub fn demo_join(&mut self, m: MemberId, ip: IpAddr, client: &str, now: Micros) {
        let bucket = self.new_bucket(now);
        let ip = self.addresses.limit().map(|_| ip);
        self.demo_members.join(m, bucket, ip);
        let name = names::sanitize_name(client, names::DEFAULT_CLIENT);
        self.demo_names.insert(m, name.into());
    }

    /// `m` leaves the example channel: returns `Client #ID left the chat` for the others
    /// ([`Chat::demo_members`], read after this call), `None` if `m` was not a member or nobody is
    /// left to tell.
    pub fn demo_leave(&mut self, m: MemberId) -> Option<EventFrame> {
        self.demo_members.leave(m);
        let name = self.demo_names.remove(&m)?;
        if self.demo_members.members().is_empty() {
            return None;
        }
        Some(self.frames.raw(&format!("Client #{name} left the chat")))
    }

    /// A text message from `m` on the example channel: rate limited like any chat message, then
    /// `You wrote: TEXT` for the sender and `Client #ID says: TEXT` for everyone, the text as sent
    /// (the example neither trims it nor keeps it).
    pub fn demo_post(&mut self, m: MemberId, text: &str, now: Micros) -> DemoPost {
        let Some((bucket, ip)) = self.demo_members.limiter_mut(m) else {
            return DemoPost::Dropped;
        };
        let conn = bucket.zip(self.cfg.rate_limit.as_ref());
        if let Verdict::Refuse { by, tell } = ratelimit::admit(conn, &mut self.addresses, ip, now) {
            self.rate_limited_total += 1;
            return match tell {
                true => DemoPost::RateLimited {
                    error: self.rate_limit_text(by),
                },
                false => DemoPost::Dropped,
            };
        }
        let name = self.demo_names.get(&m).map_or("anonymous", |n| &**n);
        let all = format!("Client #{name} says: {text}");
        DemoPost::Broadcast {
            own: format!("You wrote: {text}"),
            all: self.frames.raw(&all),
        }
    }

    /// Everyone on the example channel, in no particular order.
    pub fn demo_members(&self) -> &[MemberId] {
        self.demo_members.members()
    }
}

/// The content of a room message as the seed rooms app takes it (`--compat fastapi`): for a JSON
/// object, Python's `str(data.get("content", ""))` (a string as is; `null`, `true`, `false` as
/// `None`, `True`, `False`; a number as written; an array or object as compact JSON, where Python
/// would write its own repr); anything else is the text itself. Never refused: the caller trims,
/// and ignores what is empty.
pub(super) fn fastapi_content(text: &str) -> Cow<'_, str> {
    if !text.trim_start().starts_with('{') {
        return Cow::Borrowed(text);
    }
    if let Ok(RoomInput {
        content: Some(content),
    }) = serde_json::from_str::<RoomInput<'_>>(text)
    {
        return content;
    }
    let Ok(serde_json::Value::Object(object)) = serde_json::from_str::<serde_json::Value>(text)
    else {
        return Cow::Borrowed(text);
    };
    Cow::Owned(match object.get("content") {
        None => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) => "None".to_owned(),
        Some(serde_json::Value::Bool(true)) => "True".to_owned(),
        Some(serde_json::Value::Bool(false)) => "False".to_owned(),
        Some(other) => other.to_string(),
    })
}
