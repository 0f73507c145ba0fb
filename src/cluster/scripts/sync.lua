-- sync.lua: Redis is back (Request::Sync), for one room. Registers every member this node has in
-- the room, publishing `J` for those Redis had lost, and removes any other member of this node,
-- publishing `L` (upper case: a re-registration, which the node that made it ignores).
-- KEYS: the room's meta, log, members, names.
-- ARGV: channel, node, fresh epoch, then field (node:conn), name per member.
-- Returns the room's epoch.
local meta, log, members, names = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local channel, node = ARGV[1], ARGV[2]
local keep = {}
for i = 4, #ARGV, 2 do keep[ARGV[i]] = true end
local prefix = node .. ':'
for _, f in ipairs(redis.call('HKEYS', members)) do
  if string.sub(f, 1, #prefix) == prefix and not keep[f] then leave(KEYS, channel, f, 'L') end
end
local epoch = ensure_epoch(meta, log, ARGV[3])
if #ARGV >= 4 then redis.call('PERSIST', meta) end
for i = 4, #ARGV, 2 do
  local field, name = ARGV[i], ARGV[i + 1]
  if redis.call('HSETNX', members, field, name) == 1 then
    redis.call('HSETNX', names, name, field)
    redis.call('SPUBLISH', channel,
      'J\n' .. epoch .. '\n' .. us(now_us()) .. '\n' .. field .. '\n' .. name)
  end
end
return epoch
