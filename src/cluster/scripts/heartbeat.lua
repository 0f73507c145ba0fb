-- heartbeat.lua: run by each node's command thread every second. Notes this node alive (its score:
-- Redis's clock in ms) and returns the nodes that have not been for `ttl` ms: their members are
-- swept room by room (sweep.lua, and join.lua on the way). A node silent for `forget` ms is
-- dropped from the registry.
-- KEYS: the node registry.
-- ARGV: node, ttl ms, forget ms.
-- Returns the ids of the dead nodes.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], us(now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', us(now - tonumber(ARGV[3])))
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. us(now - tonumber(ARGV[2])))
