-- global_image.lua: the global channel's history within the TTL and its last seq.
-- KEYS: the global log, seq.
-- ARGV: ttl in microseconds.
-- Returns {{body...}, seq}.
return {live(KEYS[1], now_us() - tonumber(ARGV[1])), redis.call('GET', KEYS[2]) or '0'}
