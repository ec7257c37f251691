#!lua flags=allow-oom
-- ensure_group.lua: create the workers' consumer group on the ready stream if it is missing.
-- A script only for its flag: XGROUP CREATE is refused when the server's memory is full, and a
-- worker must still start there, since firing and acknowledging jobs is what frees memory.
--
-- KEYS[1]  ready stream (created empty if missing)
-- ARGV[1]  consumer group name
--
-- Returns 1 when the group was created, 0 when it existed.
local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if ok then
  return 1
end
if string.find(tostring(err.err or err), 'BUSYGROUP', 1, true) then
  return 0
end
return redis.error_reply(err.err or tostring(err))
