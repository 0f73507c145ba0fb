-- prelude.lua: helpers every script starts with. What Redis runs is this file followed by one
-- script's body, as one script (see scripts.rs), so these are local functions of each script.
--   now_us()                       Redis's clock, in microseconds
--   us(n)                          an integer as text
--   ensure_epoch(room, fresh)      the room's epoch: `fresh`, with an empty history, if it has none
--   leave(room, field, node, kind) removes a member and publishes its leave as `kind`
-- KEYS, ARGV: those of the script that follows.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
-- Integers as text: redis.call would print big numbers in %.14g.
local function us(n) return string.format('%.0f', n) end
local function ensure_epoch(room, fresh)
  local meta = 'wisp:meta:' .. room
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = fresh
    redis.call('DEL', 'wisp:hist:' .. room)
    redis.call('HSET', meta, 'epoch', epoch, 'seq', '0', 'at', '0')
  end
  redis.call('SADD', 'wisp:rooms', room)
  return epoch
end
-- Removes member `field` of `room` and publishes its leave; 0 if it was not there, so a leave is
-- published once however many nodes sweep.
local function leave(room, field, node, kind)
  local members, names = 'wisp:members:' .. room, 'wisp:names:' .. room
  local name = redis.call('HGET', members, field)
  if not name then return 0 end
  redis.call('HDEL', members, field)
  if redis.call('HGET', names, name) == field then redis.call('HDEL', names, name) end
  local meta = 'wisp:meta:' .. room
  local epoch = redis.call('HGET', meta, 'epoch') or ''
  if redis.call('HLEN', members) == 0 then
    local left = redis.call('PTTL', 'wisp:hist:' .. room)
    if left > 0 then
      redis.call('PEXPIRE', meta, left)
    else
      redis.call('DEL', meta)
      redis.call('SREM', 'wisp:rooms', room)
    end
  end
  redis.call('PUBLISH', 'wisp:room:' .. room,
    kind .. '\n' .. epoch .. '\n' .. us(now_us()) .. '\n' .. field .. '\n' .. name)
  return 1
end
