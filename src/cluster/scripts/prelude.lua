-- prelude.lua: helpers every script starts with. What Redis runs is this file followed by one
-- script's body, as one script (see scripts.rs), so these are local functions of each script.
-- Every key comes from the caller (KEYS): a room script gets the room's meta, log, members and
-- names, in that order (keys.rs), all under the room's hash tag, so one slot.
--   now_us()                                  Redis's clock, in microseconds
--   us(n)                                     an integer as text
--   ensure_epoch(meta, log, fresh)           the room's epoch: `fresh`, with an empty history, if it has none
--   leave(k, channel, field, kind)            removes a member and publishes its leave as `kind`
--   sweep(k, channel, dead)                   removes the members of the nodes in set `dead`
--   image(meta, log, members, ttl)           {epoch, seq, {body...}, {field, name, ...}, gap}
--   trim(log, len, cut, max)                 drops a log's head past `max` entries or older than `cut`
--   live(log, cut)                           a log's bodies newer than `cut`, oldest first
-- A message log (a room's, the global channel's) is a list of bodies `id\nat\n...` in the order
-- of their ids and times: appending is the cheapest write Redis has (benchmarks.md), and the
-- expired end is always the head.
-- (k: the room's four keys as a table.)
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
-- Integers as text: redis.call would print big numbers in %.14g; '%d' is a C long (64 bits), and
-- cheaper than '%.0f' (which is floating-point printing).
local function us(n) return string.format('%d', n) end
local function ensure_epoch(meta, log, fresh)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = fresh
    redis.call('DEL', log)
    redis.call('HSET', meta, 'epoch', epoch, 'seq', '0', 'at', '0')
  end
  return epoch
end
-- Removes member `field` and publishes its leave; 0 if it was not there, so a leave is published
-- once however many nodes sweep. The meta outlives the last member as long as the history does.
local function leave(k, channel, field, kind)
  local meta, log, members, names = k[1], k[2], k[3], k[4]
  local name = redis.call('HGET', members, field)
  if not name then return 0 end
  redis.call('HDEL', members, field)
  if redis.call('HGET', names, name) == field then redis.call('HDEL', names, name) end
  local epoch = redis.call('HGET', meta, 'epoch') or ''
  if redis.call('HLEN', members) == 0 then
    local left = redis.call('PTTL', log)
    if left > 0 then
      redis.call('PEXPIRE', meta, left)
    else
      redis.call('DEL', meta)
    end
  end
  redis.call('SPUBLISH', channel,
    kind .. '\n' .. epoch .. '\n' .. us(now_us()) .. '\n' .. field .. '\n' .. name)
  return 1
end
local function sweep(k, channel, dead)
  if next(dead) == nil then return 0 end
  local n = 0
  for _, f in ipairs(redis.call('HKEYS', k[3])) do
    local node = string.match(f, '^([^:]*):')
    if node and dead[node] then n = n + leave(k, channel, f, 'l') end
  end
  return n
end
-- The time of a log entry.
local function entry_at(body) return tonumber(string.match(body, '^%d+\n(%d+)\n')) end
local function trim(log, len, cut, max)
  local drop = math.max(0, len - max)
  while drop < len do
    local head = redis.call('LRANGE', log, drop, drop + 15)
    local old = 0
    for _, body in ipairs(head) do
      if entry_at(body) > cut then break end
      old = old + 1
    end
    drop = drop + old
    if old < #head then break end
  end
  if drop > 0 then redis.call('LTRIM', log, drop, -1) end
end
local function live(log, cut)
  local all = redis.call('LRANGE', log, 0, -1)
  local first = 1
  while first <= #all and entry_at(all[first]) <= cut do first = first + 1 end
  if first == 1 then return all end
  local bodies = {}
  for i = first, #all do bodies[#bodies + 1] = all[i] end
  return bodies
end
local function image(meta, log, members, ttl)
  local state = redis.call('HMGET', meta, 'epoch', 'seq', 'gap')
  return {state[1] or '', state[2] or '0', live(log, now_us() - ttl),
    redis.call('HGETALL', members), state[3] or '0'}
end
