-- handback.lua: give an unfinished job back to the queue at once (a worker shutting down),
-- rather than leaving it to the visibility timeout.
--
-- KEYS[1]  ready stream
-- KEYS[2]  in-flight hash
-- ARGV[1]  consumer group name
-- ARGV[2]  ready-stream entry id held by this worker
-- ARGV[3]  timer id
-- ARGV[4]  payload
-- ARGV[5]  due time (ms)
--
-- Returns the new entry id, or false when this delivery no longer owns the timer.
if redis.call('HGET', KEYS[2], ARGV[3]) ~= ARGV[2] then
  return false
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
local entry = redis.call('XADD', KEYS[1], '*', 'i', ARGV[3], 'p', ARGV[4], 'd', ARGV[5])
redis.call('HSET', KEYS[2], ARGV[3], entry)
return entry
