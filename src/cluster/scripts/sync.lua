-- sync.lua: Redis is back (Request::Sync). Registers every member of this node, publishing `J` for
-- those Redis had lost, and removes any other member of this node, publishing `L` (upper case: a
-- re-registration, which the node that made it ignores).
-- KEYS: none (called with numkeys 0): every key is built from ARGV, as laid out in keys.rs.
-- ARGV: node, fresh epoch, then room, field (node:conn), name per member.
-- Returns {room, epoch, room, epoch, ...}: one pair per member, so rooms may repeat.
local node, fresh = ARGV[1], ARGV[2]
local keep, epochs = {}, {}
for i = 3, #ARGV, 3 do
  local room, field, name = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  keep[room .. '\n' .. field] = true
  local epoch = ensure_epoch(room, fresh)
  redis.call('PERSIST', 'wisp:meta:' .. room)
  redis.call('SADD', 'wisp:noderooms:' .. node, room)
  if redis.call('HSETNX', 'wisp:members:' .. room, field, name) == 1 then
    redis.call('HSETNX', 'wisp:names:' .. room, name, field)
    redis.call('PUBLISH', 'wisp:room:' .. room,
      'J\n' .. epoch .. '\n' .. us(now_us()) .. '\n' .. field .. '\n' .. name)
  end
  epochs[#epochs + 1] = room
  epochs[#epochs + 1] = epoch
end
local prefix = node .. ':'
for _, room in ipairs(redis.call('SMEMBERS', 'wisp:noderooms:' .. node)) do
  for _, f in ipairs(redis.call('HKEYS', 'wisp:members:' .. room)) do
    if string.sub(f, 1, #prefix) == prefix and not keep[room .. '\n' .. f] then
      leave(room, f, node, 'L')
    end
  end
end
return epochs
