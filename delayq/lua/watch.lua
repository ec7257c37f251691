#!lua flags=allow-oom
-- watch.lua: keep the deadline of a key written by another program (on_expire) in the due
-- index, from the key's own TTL. Run on its keyspace events and when a scan finds it.
--
-- KEYS[1]  the watched key (any name; written by other programs)
-- KEYS[2]  data key of the watch timer (payload: the handler's task and arguments)
-- KEYS[3]  due index
-- KEYS[4]  fired marker of the watch timer (set when an expiry fired)
-- ARGV[1]  watch timer id
-- ARGV[2]  payload
-- ARGV[3]  wake channel
--
-- Returns {state, due_ms}
--   state 1: armed at the key's expiry time; 0: the key has no TTL (watch removed);
--         -1: the key is gone (a pending watch timer, if any, is left to fire)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local left = redis.call('PTTL', KEYS[1])
if left == -2 then return {-1, -1} end
if left == -1 then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('DEL', KEYS[2])
  return {0, -1}
end
local due = now + left
local head = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], due, ARGV[1])
redis.call('DEL', KEYS[4])  -- a new life of the key: its next expiry may fire again
if head[2] == nil or due < tonumber(head[2]) then
  redis.call('PUBLISH', ARGV[3], due)
end
return {1, due}
