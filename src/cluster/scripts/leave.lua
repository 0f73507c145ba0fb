-- leave.lua: a member leaves (Request::Leave): removed, and its `l` published (prelude `leave`).
-- KEYS: none (called with numkeys 0): every key is built from ARGV, as laid out in keys.rs.
-- ARGV: room, field (node:conn), node.
-- Returns 1, or 0 if the member was not there.
return leave(ARGV[1], ARGV[2], ARGV[3], 'l')
