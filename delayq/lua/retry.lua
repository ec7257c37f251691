-- retry.lua: re-arm a failed job as a timer (same id, new payload with the next attempt number)
-- and acknowledge its delivery, in one step.
--
-- KEYS[1]  shadow key
-- KEYS[2]  data key
-- KEYS[3]  due index
-- KEYS[4]  ready stream
-- KEYS[5]  in-flight hash
-- KEYS[6]  stats hash
-- ARGV[1]  consumer group name
-- ARGV[2]  ready-stream entry id of the failed delivery
-- ARGV[3]  timer id
-- ARGV[4]  new payload
-- ARGV[5]  delay before the next attempt, ms
-- ARGV[6]  wake channel
--
-- Returns {due_ms} when re-armed, {-1} when this delivery no longer owns the timer (it was
-- re-delivered elsewhere); the entry is acknowledged either way.
redis.call('XACK', KEYS[4], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[4], ARGV[2])
if redis.call('HGET', KEYS[5], ARGV[3]) ~= ARGV[2] then
  return {-1}
end
redis.call('HDEL', KEYS[5], ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local delay = tonumber(ARGV[5])
if delay < 1 then delay = 1 end
local due = now + delay
local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
redis.call('SET', KEYS[1], '1', 'PX', delay)
redis.call('SET', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], due, ARGV[3])
redis.call('HINCRBY', KEYS[6], 'retried', 1)
if first[2] == nil or due < tonumber(first[2]) then
  redis.call('PUBLISH', ARGV[6], due)
end
return {due}
