-- global.lua: global-channel messages (Request::GlobalPost), in order: each its seq, its time
-- (a microsecond after the last at least, so the history's order is the seqs' order), the
-- history (trimmed as a room's) and its SPUBLISH on the channel.
-- KEYS: the global log, seq, at.
-- ARGV: channel, ttl in microseconds, history max (0: none), then the texts.
-- Returns the last seq.
local log, seqkey, atkey = KEYS[1], KEYS[2], KEYS[3]
local channel, ttl, max = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_us()
local at = tonumber(redis.call('GET', atkey)) or 0
local seq, len = 0, 0
for i = 4, #ARGV do
  seq = redis.call('INCR', seqkey)
  at = math.max(now, at + 1)
  local body = us(seq) .. '\n' .. us(at) .. '\n' .. ARGV[i]
  if max > 0 then len = redis.call('RPUSH', log, body) end
  redis.call('SPUBLISH', channel, body)
end
redis.call('SET', atkey, us(at))
if max > 0 then
  trim(log, len, now - ttl, max)
  redis.call('PEXPIRE', log, math.floor(ttl / 1000) + 1000)
end
return seq
