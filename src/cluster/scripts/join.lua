-- join.lua: a client joins a room (Request::Join). Removes the members of dead nodes, gives the
-- room an epoch if it has none, keeps its meta from expiring, takes the first name of wanted,
-- wanted#2, wanted#3, ... that no member of the room has on any node, registers the member under
-- it and publishes `j`. For a node that starts following the room, also returns the room's image,
-- read in the same step: the node subscribed to the channel before, so the image and the events
-- after it miss nothing.
-- KEYS: the room's meta, log, members, names.
-- ARGV: channel, wanted name, field (node:conn), fresh epoch (used if the room has none),
-- ttl in microseconds (0: no image), then the ids of dead nodes.
-- Returns {name, epoch} or {name, epoch, image} (prelude `image`).
local channel, wanted, field = ARGV[1], ARGV[2], ARGV[3]
local dead = {}
for i = 6, #ARGV do dead[ARGV[i]] = true end
sweep(KEYS, channel, dead)
local meta, log, members, names = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local epoch = ensure_epoch(meta, log, ARGV[4])
redis.call('PERSIST', meta)
local name, n = wanted, 2
while redis.call('HEXISTS', names, name) == 1 do
  name = wanted .. '#' .. n
  n = n + 1
end
redis.call('HSET', members, field, name)
redis.call('HSET', names, name, field)
redis.call('SPUBLISH', channel,
  'j\n' .. epoch .. '\n' .. us(now_us()) .. '\n' .. field .. '\n' .. name)
local ttl = tonumber(ARGV[5])
if ttl > 0 then return {name, epoch, image(meta, log, members, ttl)} end
return {name, epoch}
