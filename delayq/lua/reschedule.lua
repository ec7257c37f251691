-- reschedule.lua: move a pending timer's deadline, earlier or later, keeping its payload.
--
-- KEYS[1]  shadow key
-- KEYS[2]  data key
-- KEYS[3]  due index
-- ARGV[1]  timer id
-- ARGV[2]  "delay" (ARGV[3] is ms from now) or "at" (ARGV[3] is a unix time in ms)
-- ARGV[3]  milliseconds, an integer >= 0
-- ARGV[4]  wake channel, published to when the timer becomes the earliest pending one
--
-- Returns {due_ms, now_ms}; due_ms is -1 when no timer with this id is pending.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  return {-1, now}
end
local due
if ARGV[2] == 'at' then due = tonumber(ARGV[3]) else due = now + tonumber(ARGV[3]) end
local ttl = due - now
if ttl < 1 then ttl = 1 end
local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
redis.call('SET', KEYS[1], '1', 'PX', ttl)
redis.call('ZADD', KEYS[3], due, ARGV[1])
if due < tonumber(first[2]) then
  redis.call('PUBLISH', ARGV[4], due)
end
return {due, now}
