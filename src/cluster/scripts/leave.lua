-- leave.lua: a member leaves (Request::Leave, or this node stopping): removed, and its `l`
-- published (prelude `leave`).
-- KEYS: the room's meta, log, members, names.
-- ARGV: channel, field (node:conn).
-- Returns 1, or 0 if the member was not there.
return leave(KEYS, ARGV[1], ARGV[2], 'l')
