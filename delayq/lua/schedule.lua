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
-- The shadow key outlives the deadline by a grace (SHADOW_GRACE_MS in _keys.py): a timer
-- claimed on time is deleted before it expires, so only a straggler publishes `expired`.
local GRACE = 1000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

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
local ttl = due - now
if ttl < 1 then ttl = 1 end

local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
redis.call('SET', KEYS[1], ttl, 'PX', ttl + GRACE)
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], due, ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
if first[2] == nil or due < tonumber(first[2]) then
  redis.call('PUBLISH', ARGV[6], due)
end
return {1, due, now, false}
