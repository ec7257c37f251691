#!lua flags=allow-oom
-- handback.lua: give an unfinished job back to the queue at once (a worker shutting down),
-- rather than leaving it to the visibility timeout. Only the worker that still owns the
-- entry may do so (XPENDING names the owner).
--
-- KEYS[1]  ready stream
-- ARGV[1]  consumer group name
-- ARGV[2]  ready-stream entry id held by this worker
-- ARGV[3]  timer id
-- ARGV[4]  payload
-- ARGV[5]  due time (ms)
-- ARGV[6]  touches of a debounced timer (payload="all"), "" if none
-- ARGV[7]  consumer name of this worker
--
-- Returns the new entry id, or false when this delivery no longer holds the entry.
if not settle(KEYS[1], ARGV[1], ARGV[2], ARGV[7]) then return false end
if ARGV[6] ~= '' then
  return redis.call('XADD', KEYS[1], '*', 'i', ARGV[3], 'p', ARGV[4], 'd', ARGV[5], 'a', ARGV[6])
end
return redis.call('XADD', KEYS[1], '*', 'i', ARGV[3], 'p', ARGV[4], 'd', ARGV[5])
