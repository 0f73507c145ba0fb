-- join.lua: a client joins a room (Request::Join). Gives the room an epoch if it has none, keeps
-- its meta from expiring, notes the room among this node's (for sweeping), takes the first name of
-- wanted, wanted#2, wanted#3, ... that no member of the room has on any node, registers the member
-- under it and publishes `j`.
-- KEYS: none (called with numkeys 0): every key is built from ARGV, as laid out in keys.rs.
-- ARGV: room, wanted name, field (node:conn), node, fresh epoch (used if the room has none).
-- Returns {name, epoch}.
local room, wanted, field, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local epoch = ensure_epoch(room, ARGV[5])
redis.call('PERSIST', 'wisp:meta:' .. room)
redis.call('SADD', 'wisp:noderooms:' .. node, room)
local names = 'wisp:names:' .. room
local name, n = wanted, 2
while redis.call('HEXISTS', names, name) == 1 do
  name = wanted .. '#' .. n
  n = n + 1
end
redis.call('HSET', 'wisp:members:' .. room, field, name)
redis.call('HSET', names, name, field)
redis.call('PUBLISH', 'wisp:room:' .. room,
  'j\n' .. epoch .. '\n' .. us(now_us()) .. '\n' .. field .. '\n' .. name)
return {name, epoch}
