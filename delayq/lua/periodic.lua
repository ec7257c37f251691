#!lua flags=allow-oom
-- periodic.lua: arm the next tick of a periodic task, compare-and-set on its state hash, so
-- that each tick instant is armed at most once, whatever workers race or restart.
--
-- KEYS[1]  state hash of the task: sig (schedule signature), armed (last tick armed, ms),
--          armed_at (when it was armed, server ms), last_run (tick of the last run, ms),
--          last_run_at (when it started, ms)
-- KEYS[2]  shadow key of the new tick's timer
-- KEYS[3]  payload bucket of the new tick's timer
-- KEYS[4]  due index
-- KEYS[5]  shadow key of the tick to cancel ("" slot if none)
-- KEYS[6]  payload bucket of the tick to cancel
-- KEYS[7]  paused hash (a paused tick to cancel leaves it too)
-- ARGV[1]  expected sig ("" = no state yet)
-- ARGV[2]  expected armed tick ("" = none)
-- ARGV[3]  new sig ("" = the task is gone: cancel its tick and delete its state)
-- ARGV[4]  new tick instant, ms (the tick's identity)
-- ARGV[5]  new tick due time, ms (the instant plus its jitter)
-- ARGV[6]  new tick timer id
-- ARGV[7]  new tick payload
-- ARGV[8]  wake channel
-- ARGV[9]  timer id of the tick to cancel ("" = none)
--
-- Returns 1 when applied; -1 when the state is not as expected (another worker moved it:
-- re-read and decide again); 0 when the new tick is not later than the armed one.
local sig = redis.call('HGET', KEYS[1], 'sig') or ''
local armed = redis.call('HGET', KEYS[1], 'armed') or ''
if sig ~= ARGV[1] or armed ~= ARGV[2] then return -1 end

if ARGV[9] ~= '' then
  redis.call('ZREM', KEYS[4], ARGV[9])
  redis.call('HDEL', KEYS[7], ARGV[9])
  redis.call('DEL', KEYS[5])
  payload_del(KEYS[6], ARGV[9])
end
if ARGV[3] == '' then
  redis.call('DEL', KEYS[1])
  return 1
end

local tick = tonumber(ARGV[4])
if sig == ARGV[3] and armed ~= '' and tick <= tonumber(armed) then return 0 end

local now = server_now()
local due = tonumber(ARGV[5])
payload_set(KEYS[3], ARGV[6], ARGV[7])
arm(KEYS[2], KEYS[4], ARGV[6], due, math.max(due - now, 1), now, ARGV[8])
redis.call('HSET', KEYS[1], 'sig', ARGV[3], 'armed', ARGV[4], 'armed_at', now)
return 1
