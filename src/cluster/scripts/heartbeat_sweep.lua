-- heartbeat_sweep.lua: run by each node's command thread every second. Refreshes this node's
-- liveness key, sweeps the members of nodes whose key has expired (publishing their `l`, then
-- forgetting those nodes), and publishes a heartbeat on wisp:hb, which keeps every feed talking.
-- KEYS: none (called with numkeys 0): every key is built from ARGV, as laid out in keys.rs.
-- ARGV: node, node ttl ms.
-- Returns the number of members swept.
local me = ARGV[1]
redis.call('SET', 'wisp:node:' .. me, '1', 'PX', ARGV[2])
redis.call('SADD', 'wisp:nodes', me)
local swept = 0
for _, node in ipairs(redis.call('SMEMBERS', 'wisp:nodes')) do
  if redis.call('EXISTS', 'wisp:node:' .. node) == 0 then
    local prefix = node .. ':'
    for _, room in ipairs(redis.call('SMEMBERS', 'wisp:noderooms:' .. node)) do
      for _, f in ipairs(redis.call('HKEYS', 'wisp:members:' .. room)) do
        if string.sub(f, 1, #prefix) == prefix then swept = swept + leave(room, f, node, 'l') end
      end
    end
    redis.call('DEL', 'wisp:noderooms:' .. node)
    redis.call('SREM', 'wisp:nodes', node)
  end
end
redis.call('PUBLISH', 'wisp:hb', me)
return swept
