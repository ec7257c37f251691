#!lua
-- control.lua: change a pending timer's deadline: reschedule, restart, extend, pause, resume.
--
-- KEYS[1]  shadow key       value = the armed duration in ms
-- KEYS[2]  payload bucket (read only for the task of its event: the payload stays as it is)
-- KEYS[3]  due index
-- KEYS[4]  paused hash      timer id -> "remaining_ms:duration_ms"
-- KEYS[5]  events stream: "rescheduled" for a new deadline, if the timer's task wants it told
-- ARGV[1]  timer id
-- ARGV[2]  operation:
--            "delay"   ARGV[3] = ms from now       (reschedule(delay=); duration becomes it)
--            "at"      ARGV[3] = unix time in ms   (reschedule(at=))
--            "restart" (the armed duration again, from now)
--            "extend"  ARGV[3] = ms to add (may be negative: never before now)
--            "pause"   (keeps the time left; the timer cannot fire while paused)
--            "resume"  (the time left when paused, from now)
-- ARGV[3]  milliseconds, as above
-- ARGV[4]  wake channel
-- ARGV[5]  the caller's estimate of the armed duration, ms: used only when the shadow key is
--          gone (it expires a grace after the deadline, so a timer overdue by more, with no
--          worker to fire it, has lost it), so that "restart" still has a duration and "pause"
--          and "extend" carry a plausible one forward instead of their own argument
-- ARGV[6]  events spec (prelude: event_spec)
--
-- Returns {status, due_ms, now_ms}
--   status  1: done (due_ms is the new deadline; for "pause", the time left in ms)
--           0: no such pending timer (never existed, fired or cancelled)
--          -1: the timer is paused (only "resume" and "pause" apply; "pause" is then a no-op)
--          -2: "resume" of a timer that is not paused
local now = server_now()
local id, op, ms = ARGV[1], ARGV[2], tonumber(ARGV[3])

local paused = redis.call('HGET', KEYS[4], id)
local score = redis.call('ZSCORE', KEYS[3], id)
if not paused and not score then return {0, -1, now} end

local function rearm(due, duration)
  if due < now then due = now end
  arm(KEYS[1], KEYS[3], id, due, duration, now, ARGV[4])
  local spec = event_spec(ARGV[6])
  if spec then
    tell(KEYS[5], spec, payload_task(payload_get(KEYS[2], id) or ''), 'rescheduled', id, 1,
         {'d', due})
  end
  return {1, due, now}
end

if paused then
  if op == 'pause' then return {-1, -1, now} end
  if op ~= 'resume' then return {-1, -1, now} end
  local sep = string.find(paused, ':', 1, true)
  local left = tonumber(string.sub(paused, 1, sep - 1))
  local duration = tonumber(string.sub(paused, sep + 1))
  redis.call('HDEL', KEYS[4], id)
  return rearm(now + left, duration)
end

if op == 'resume' then return {-2, tonumber(score), now} end
local duration = tonumber(redis.call('GET', KEYS[1]) or ARGV[5])
if op == 'delay' then
  return rearm(now + ms, ms)
elseif op == 'at' then
  return rearm(ms, math.max(ms - now, 0))
elseif op == 'restart' then
  return rearm(now + duration, duration)
elseif op == 'extend' then
  return rearm(tonumber(score) + ms, duration)
elseif op == 'pause' then
  local left = tonumber(score) - now
  if left < 0 then left = 0 end
  redis.call('ZREM', KEYS[3], id)
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[4], id, left .. ':' .. duration)
  return {1, left, now}
end
return redis.error_reply('unknown operation ' .. op)
