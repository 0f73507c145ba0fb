-- image.lua: what a feed that has just subscribed needs of one room: epoch, last id, the history
-- within the TTL, and the members (prelude `image`). One script, so the image is one point in the
-- stream of the room's events.
-- KEYS: the room's meta, log, members.
-- ARGV: ttl in microseconds.
-- Returns {epoch, seq, {body...}, {field, name, ...}, gap}.
return image(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]))
