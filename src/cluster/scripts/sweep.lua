-- sweep.lua: removes the members of dead nodes from a room, publishing their `l`.
-- KEYS: the room's meta, log, members, names.
-- ARGV: channel, then the ids of the dead nodes.
-- Returns the number of members removed.
local dead = {}
for i = 2, #ARGV do dead[ARGV[i]] = true end
return sweep(KEYS, ARGV[1], dead)
