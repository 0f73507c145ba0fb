-- rebase.lua: a room's shard failed over, and its new master may lack the last writes of the old
-- one (replication is asynchronous). A node that saw ids up to `last` makes the room's sequence
-- continue after it, so that no id is given out twice, and notes `gap`: ids up to it may be
-- missing from the history, so a client resuming from before it is told `recovered: false`.
-- KEYS: the room's meta, log, members, names.
-- ARGV: channel, last id seen.
-- Returns 1 if the sequence moved, 0 if nothing was lost (or the room is gone: its next post
-- starts a new epoch).
local meta, last = KEYS[1], tonumber(ARGV[2])
local seq = tonumber(redis.call('HGET', meta, 'seq') or '-1')
if seq < 0 or seq >= last then return 0 end
redis.call('HSET', meta, 'seq', us(last), 'gap', us(last))
return 1
