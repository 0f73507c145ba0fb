-- post.lua: a batch of messages for one or more rooms (Request::Post, Request::Publish), atomically
-- per room: their ids (the room's seq + 1, + 2, ...), their times (Redis's clock, each a
-- microsecond after the room's last at least, so that the history's order is the ids' order), the
-- log (appended, trimmed to the TTL and the history max, kept a second past the TTL), the meta's
-- expiry (none while the room has members) and one SPUBLISH per room carrying the whole batch.
-- KEYS: per room, its meta, log, members (3 each). In a Redis Cluster the caller sends one call
-- per slot; on one server, one call for the whole batch.
-- ARGV: ttl in microseconds, history max (0: none), then per room: channel, fresh epoch, count N,
-- whether a member of the room sent one of them (1: the room has members, its meta is kept
-- without expiry by join.lua; 0: a server API message, which checks), then N × (client, content).
-- Trimming the log is amortised: it runs when the ids cross a multiple of TRIM_EVERY, so a log
-- holds at most TRIM_EVERY - 1 entries past the TTL or the max in between (every reader filters
-- both). Five commands per room and call, not ten: Redis' CPU per post (benchmarks.md).
-- Returns the last id of each room, in order.
local ttl, max = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_us()
local keep_ms = math.floor(ttl / 1000) + 1000
local TRIM_EVERY = 8
local ids = {}
local a = 3
for r = 0, #KEYS / 3 - 1 do
  local meta, log, members = KEYS[3 * r + 1], KEYS[3 * r + 2], KEYS[3 * r + 3]
  local channel, fresh, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local member_sent = ARGV[a + 3] == '1'
  a = a + 4
  local state = redis.call('HMGET', meta, 'epoch', 'seq', 'at')
  local epoch, seq, at = state[1], tonumber(state[2]) or 0, tonumber(state[3]) or 0
  if not epoch then
    -- A room without an epoch starts one (as prelude's ensure_epoch).
    epoch, seq, at = fresh, 0, 0
    redis.call('DEL', log)
    redis.call('HSET', meta, 'epoch', epoch)
  end
  local event, bodies = {'m\n', epoch, '\n', n, '\n'}, {}
  for _ = 1, n do
    local client, content = ARGV[a], ARGV[a + 1]
    a = a + 2
    seq = seq + 1
    at = math.max(now, at + 1)
    local head = us(seq) .. '\n' .. us(at) .. '\n'
    bodies[#bodies + 1] = head .. client .. '\n' .. content
    event[#event + 1] = head .. #client .. '\n' .. #content .. '\n' .. client .. content
  end
  redis.call('HSET', meta, 'seq', us(seq), 'at', us(at))
  if max > 0 then
    local len = redis.call('RPUSH', log, unpack(bodies))
    if math.floor(seq / TRIM_EVERY) ~= math.floor((seq - n) / TRIM_EVERY) then
      trim(log, len, now - ttl, max)
    end
    redis.call('PEXPIRE', log, keep_ms)
  end
  if not member_sent then
    if redis.call('HLEN', members) > 0 then
      redis.call('PERSIST', meta)
    else
      redis.call('PEXPIRE', meta, keep_ms)
    end
  end
  redis.call('SPUBLISH', channel, table.concat(event))
  ids[#ids + 1] = seq
end
return ids
