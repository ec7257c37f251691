#!lua flags=no-writes
-- companion.lua: a watched key's companion data, read on its own node (a cluster) for
-- watch.lua "given". A value of another type than string counts as none, as in watch.lua.
--
-- KEYS[1]  companion data key
--
-- Returns its value, or nil.
if redis.call('TYPE', KEYS[1]).ok ~= 'string' then return nil end
return redis.call('GET', KEYS[1])
