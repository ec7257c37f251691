#!lua
-- redrive.lua: take one dead letter off the dead-letter stream and arm it again as a timer.
--
-- KEYS[1]  dead-letter stream
-- KEYS[2]  shadow key
-- KEYS[3]  data key
-- KEYS[4]  due index
-- KEYS[5]  items list
-- ARGV[1]  dead-letter entry id
-- ARGV[2]  timer id
-- ARGV[3]  payload (attempt reset)
-- ARGV[4]  wake channel
-- ARGV[5]  touches of a debounced timer (payload="all"), "" if none
--
-- Returns 1 when re-armed, 0 when the entry is gone, -1 when a timer with this id is pending
-- (the dead letter is then left in place).
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
-- The shadow key outlives the deadline by a grace (SHADOW_GRACE_MS in _keys.py): a timer
-- claimed on time is deleted before it expires, so only a straggler publishes `expired`.
local GRACE = 1000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], 1, 'PX', 1 + GRACE)
redis.call('SET', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], now, ARGV[2])
if ARGV[5] ~= '' then
  redis.call('DEL', KEYS[5])
  redis.call('RPUSH', KEYS[5], ARGV[5])
end
redis.call('PUBLISH', ARGV[4], now)
return 1
