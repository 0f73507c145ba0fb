-- global.lua: a global-channel message (Request::GlobalPost): its seq, its time (never behind the
-- last), the history (trimmed as a room's) and the PUBLISH on wisp:global.
-- KEYS: none (called with numkeys 0): every key is built from ARGV, as laid out in keys.rs.
-- ARGV: text, ttl in microseconds, history max (0: none).
-- Returns the seq.
local text, ttl, max = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_us()
local at = math.max(now, tonumber(redis.call('GET', 'wisp:global:at')) or 0)
redis.call('SET', 'wisp:global:at', us(at))
local seq = redis.call('INCR', 'wisp:global:seq')
local body = us(seq) .. '\n' .. us(at) .. '\n' .. text
local hist = 'wisp:global:hist'
if max > 0 then
  redis.call('ZADD', hist, us(at), body)
  redis.call('ZREMRANGEBYSCORE', hist, '-inf', us(now - ttl))
  redis.call('ZREMRANGEBYRANK', hist, 0, -(max + 1))
  redis.call('PEXPIRE', hist, math.floor(ttl / 1000) + 1000)
end
redis.call('PUBLISH', 'wisp:global', body)
return seq
