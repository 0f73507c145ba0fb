-- bye.lua: this node stops (Request::Shutdown): its members leave (`l` published), its keys go.
-- KEYS: none (called with numkeys 0): every key is built from ARGV, as laid out in keys.rs.
-- ARGV: node.
-- Returns 1.
local node = ARGV[1]
local prefix = node .. ':'
for _, room in ipairs(redis.call('SMEMBERS', 'wisp:noderooms:' .. node)) do
  for _, f in ipairs(redis.call('HKEYS', 'wisp:members:' .. room)) do
    if string.sub(f, 1, #prefix) == prefix then leave(room, f, node, 'l') end
  end
end
redis.call('DEL', 'wisp:noderooms:' .. node, 'wisp:node:' .. node)
redis.call('SREM', 'wisp:nodes', node)
return 1
