-- image.lua: the whole cluster as a feed that has just subscribed sees it. One script, so the image
-- is one point in the stream of published events. Per room: epoch, last id, the history within
-- the TTL, and the members; a room with neither meta nor members is dropped from wisp:rooms.
-- KEYS: none (called with numkeys 0): every key is built from ARGV, as laid out in keys.rs.
-- ARGV: ttl in microseconds.
-- Returns {{room, epoch, seq, {body...}, {field, name, ...}}...}, {global body...}, global seq.
local cut = '(' .. us(now_us() - tonumber(ARGV[1]))
local rooms = {}
for _, room in ipairs(redis.call('SMEMBERS', 'wisp:rooms')) do
  local meta, members = 'wisp:meta:' .. room, 'wisp:members:' .. room
  local epoch = redis.call('HGET', meta, 'epoch')
  if epoch or redis.call('HLEN', members) > 0 then
    rooms[#rooms + 1] = {room, epoch or '', redis.call('HGET', meta, 'seq') or '0',
      redis.call('ZRANGEBYSCORE', 'wisp:hist:' .. room, cut, '+inf'),
      redis.call('HGETALL', members)}
  else
    redis.call('SREM', 'wisp:rooms', room)
  end
end
return {rooms, redis.call('ZRANGEBYSCORE', 'wisp:global:hist', cut, '+inf'),
  redis.call('GET', 'wisp:global:seq') or '0'}
