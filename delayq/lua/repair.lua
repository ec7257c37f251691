#!lua flags=allow-oom
-- repair.lua: re-index a payload that the sweeper found without a due-index entry.
-- (Payloads are stored only for pending or paused timers: firing moves the payload into the
-- ready stream.)
--
-- KEYS[1]  shadow key
-- KEYS[2]  payload bucket
-- KEYS[3]  due index
-- KEYS[4]  stats hash
-- KEYS[5]  paused hash
-- ARGV[1]  timer id
--
-- The timer is re-indexed at its shadow key's deadline, or due now if the shadow key is gone
-- (e.g. dropped when an RDB file was loaded after its TTL passed).
-- Returns 1 if it was repaired, 0 if nothing was wrong (any more).
if not payload_exists(KEYS[2], ARGV[1]) then return 0 end
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 0 end
if redis.call('HEXISTS', KEYS[5], ARGV[1]) == 1 then return 0 end
-- The shadow key outlives the deadline by a grace (SHADOW_GRACE_MS in _keys.py): a timer
-- claimed on time is deleted before it expires, so only a straggler publishes `expired`.
local now = server_now()
local left = redis.call('PTTL', KEYS[1]) - GRACE
local due = now
if left > 0 then due = now + left end
redis.call('ZADD', KEYS[3], due, ARGV[1])
redis.call('HINCRBY', KEYS[4], 'repaired_data', 1)
return 1
