#!lua
-- schedule.lua: arm one timer (shadow key + data key + due-index entry), atomically.
--
-- KEYS[1]  shadow key        value = the armed duration in ms (for restart),
--                            PX = time left + grace
-- KEYS[2]  data key          the msgpack payload
-- KEYS[3]  due index         sorted set, member = timer id, score = due time (ms, server clock)
-- KEYS[4]  paused hash       timer id -> "remaining_ms:duration_ms" of paused timers
-- ARGV[1]  timer id
-- ARGV[2]  payload (msgpack bytes)
-- ARGV[3]  "delay" (ARGV[4] is ms from now) or "at" (ARGV[4] is a unix time in ms)
-- ARGV[4]  milliseconds, an integer >= 0
-- ARGV[5]  "1" replace a pending timer with the same id, "0" keep it (idempotent id)
-- ARGV[6]  wake channel: published to when this timer becomes the earliest pending one
--
-- Returns {created, due_ms, now_ms, stored_payload}
--   created = 1 when armed now; 0 when a timer with this id was already pending (or paused:
--   due_ms is then -1), in which case stored_payload is its payload.
local now = server_now()

if ARGV[5] ~= '1' then
  local existing = redis.call('GET', KEYS[2])
  if existing then
    local score = redis.call('ZSCORE', KEYS[3], ARGV[1])
    return {0, score and tonumber(score) or -1, now, existing}
  end
end

local due
if ARGV[3] == 'at' then
  due = tonumber(ARGV[4])
else
  due = now + tonumber(ARGV[4])
end

redis.call('SET', KEYS[2], ARGV[2])
arm(KEYS[1], KEYS[3], ARGV[1], due, math.max(due - now, 1), now, ARGV[6])
redis.call('HDEL', KEYS[4], ARGV[1])
return {1, due, now, false}
