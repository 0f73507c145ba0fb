-- post.lua: a member's message (Request::Post), atomically: its id (the room's seq + 1), its time
-- (Redis's clock, never behind the room's last), the history (added, trimmed to the TTL and the
-- history max, kept a second past the TTL), the meta's expiry (none while the room has members)
-- and the `m` PUBLISH.
-- KEYS: none (called with numkeys 0): every key is built from ARGV, as laid out in keys.rs.
-- ARGV: room, client (the sender's name), content, ttl in microseconds, history max (0: none),
-- fresh epoch.
-- Returns the id.
local room, client, content = ARGV[1], ARGV[2], ARGV[3]
local ttl, max = tonumber(ARGV[4]), tonumber(ARGV[5])
local epoch = ensure_epoch(room, ARGV[6])
local meta, hist = 'wisp:meta:' .. room, 'wisp:hist:' .. room
local now = now_us()
local at = math.max(now, tonumber(redis.call('HGET', meta, 'at')) or 0)
local id = redis.call('HINCRBY', meta, 'seq', 1)
redis.call('HSET', meta, 'at', us(at))
local body = us(id) .. '\n' .. us(at) .. '\n' .. client .. '\n' .. content
local keep_ms = math.floor(ttl / 1000) + 1000
if max > 0 then
  redis.call('ZADD', hist, us(at), body)
  redis.call('ZREMRANGEBYSCORE', hist, '-inf', us(now - ttl))
  redis.call('ZREMRANGEBYRANK', hist, 0, -(max + 1))
  redis.call('PEXPIRE', hist, keep_ms)
end
if redis.call('HLEN', 'wisp:members:' .. room) > 0 then
  redis.call('PERSIST', meta)
else
  redis.call('PEXPIRE', meta, keep_ms)
end
redis.call('PUBLISH', 'wisp:room:' .. room, 'm\n' .. epoch .. '\n' .. body)
return id
