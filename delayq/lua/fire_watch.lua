#!lua flags=allow-oom
-- fire_watch.lua: the claim of watch timers (on_expire), the counterpart of fire.lua.
-- A watch timer fires when it is due and its watched key is gone (expired). If the key got a
-- new TTL that the worker has not heard of, the timer moves to the new deadline instead.
-- Firing sets a marker, so that an `expired` notification arriving afterwards (or to several
-- workers) cannot fire the same expiry again.
--
-- KEYS[1]          due index
-- KEYS[2]          ready stream
-- KEYS[3]          stats hash
-- KEYS[4 + 4i]     watched key of the i-th timer (i from 0)
-- KEYS[5 + 4i]     data key of the i-th watch timer
-- KEYS[6 + 4i]     companion data key of the watched key ("" slot name if none)
-- KEYS[7 + 4i]     fired marker of the i-th watch timer
-- ARGV[1]          "index": fire only timers due in the index;
--                  "expired": an expired notification named these keys: also fire a key
--                  that expired unseen (no timer) unless its marker shows it already fired
-- ARGV[2]          marker lifetime, ms
-- ARGV[3]          wake channel
-- ARGV[3 + i + 1]  id of the i-th watch timer
-- ARGV[3 + n + i + 1]  payload for the i-th timer when none is stored ("expired" mode)
--
-- Stream entry fields: i, p, d as in fire.lua, and w = the companion data when it exists.
-- Returns {now_ms, fired, next_due_ms or -1}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode, marker_ms = ARGV[1], tonumber(ARGV[2])
local n = (#ARGV - 3) / 2
local fired = 0

for i = 1, n do
  local id = ARGV[3 + i]
  local base = 4 * i
  local watched, data, companion, marker = KEYS[base], KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]
  local score = redis.call('ZSCORE', KEYS[1], id)
  -- An expired notification for a key with a timer means it expired early (e.g. EXPIRE 0):
  -- the key's time left, checked below, decides.
  local due = score and (tonumber(score) <= now or mode == 'expired')
  local unseen = (not score) and mode == 'expired' and redis.call('EXISTS', marker) == 0
  if due or unseen then
    local left = redis.call('PTTL', watched)
    if left >= 0 then
      -- Still there (0: it expires within this millisecond): try again at its deadline.
      if score then redis.call('ZADD', KEYS[1], now + math.max(left, 1), id) end
    elseif left == -1 then
      redis.call('ZREM', KEYS[1], id)
      redis.call('DEL', data)
    else
      redis.call('ZREM', KEYS[1], id)
      local payload = redis.call('GET', data) or ARGV[3 + n + i]
      redis.call('DEL', data)
      redis.call('SET', marker, 1, 'PX', marker_ms)
      local due_at = score or now
      local value = false
      -- A companion of another type than string is passed as absent, not as an error that
      -- would abort the claim after the timer was already removed.
      if companion ~= '' and redis.call('TYPE', companion).ok == 'string' then
        value = redis.call('GET', companion)
      end
      if value then
        redis.call('XADD', KEYS[2], '*', 'i', id, 'p', payload, 'd', due_at, 'w', value)
      else
        redis.call('XADD', KEYS[2], '*', 'i', id, 'p', payload, 'd', due_at)
      end
      fired = fired + 1
    end
  end
end

if fired > 0 then redis.call('HINCRBY', KEYS[3], 'fired_watch', fired) end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_due = -1
if first[2] then next_due = tonumber(first[2]) end
return {now, fired, next_due}
