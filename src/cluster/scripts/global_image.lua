-- global_image.lua: the global channel's history within the TTL and its last seq.
-- KEYS: the global hist, seq.
-- ARGV: ttl in microseconds.
-- Returns {{body...}, seq}.
local cut = '(' .. us(now_us() - tonumber(ARGV[1]))
return {redis.call('ZRANGEBYSCORE', KEYS[1], cut, '+inf'), redis.call('GET', KEYS[2]) or '0'}
