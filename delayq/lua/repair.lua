-- repair.lua: check one timer found by the sweeper and repair it if its keys disagree.
--
-- KEYS[1]  shadow key
-- KEYS[2]  data key
-- KEYS[3]  due index
-- KEYS[4]  in-flight hash
-- KEYS[5]  ready stream
-- KEYS[6]  stats hash
-- ARGV[1]  timer id
--
-- Cases repaired:
--   data key, no index entry, not in flight      -> re-indexed at the shadow key's deadline,
--                                                   or due now if the shadow key is gone
--   in flight, but its ready-stream entry is gone -> due now again (at-least-once)
-- Returns "data", "inflight" or "ok".
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entry = redis.call('HGET', KEYS[4], ARGV[1])
if entry then
  if #redis.call('XRANGE', KEYS[5], entry, entry) > 0 then return 'ok' end
  redis.call('HDEL', KEYS[4], ARGV[1])
  if redis.call('EXISTS', KEYS[2]) == 0 then return 'ok' end
  redis.call('ZADD', KEYS[3], now, ARGV[1])
  redis.call('HINCRBY', KEYS[6], 'repaired_inflight', 1)
  return 'inflight'
end
if redis.call('EXISTS', KEYS[2]) == 0 then return 'ok' end
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 'ok' end
local left = redis.call('PTTL', KEYS[1])
local due = now
if left > 0 then due = now + left end
redis.call('ZADD', KEYS[3], due, ARGV[1])
redis.call('HINCRBY', KEYS[6], 'repaired_data', 1)
return 'data'
