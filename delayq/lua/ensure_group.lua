#!lua flags=allow-oom
-- ensure_group.lua: create the workers' consumer group on each ready stream a worker reads if
-- it is missing, and list the worker's queues among those with streams.
-- A script for its flag: XGROUP CREATE is refused when the server's memory is full, and a
-- worker must still start there, since firing and acknowledging jobs is what frees memory.
--
-- KEYS[1]      the set of queues with streams
-- KEYS[1 + i]  a ready stream (created empty if missing)
-- ARGV[1]      consumer group name
-- ARGV[1 + i]  a queue the worker serves
--
-- Returns how many groups were created.
local created = 0
for i = 2, #KEYS do
  local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[i], ARGV[1], '0', 'MKSTREAM')
  if ok then
    created = created + 1
  elseif not string.find(tostring(err.err or err), 'BUSYGROUP', 1, true) then
    return redis.error_reply(err.err or tostring(err))
  end
end
if #ARGV > 1 then redis.call('SADD', KEYS[1], unpack(ARGV, 2)) end
return created
