#!lua
-- touch.lua: arm a debounced timer, or re-arm it if its cycle is still pending: it fires
-- `seconds` after the last touch (at most `max_wait` after the first touch of the cycle).
-- A cycle is pending while its due-index entry exists; once fired (entry removed by
-- fire.lua), the next touch starts a new cycle. So a touch racing the firing either lands
-- in the pending cycle or arms the next one: never lost, never fired twice.
--
-- KEYS[1]  shadow key        value = `seconds` in ms, PX = time left + grace
-- KEYS[2]  data key          the payload ("last": newest touch, "first": first touch,
--                            "all": the call's task, the touches are in KEYS[3])
-- KEYS[3]  items list        "all" only: one msgpack item per touch, newest last
-- KEYS[4]  due index
-- KEYS[5]  first-touch hash  timer id -> first touch of the cycle, ms (max_wait only)
-- KEYS[6]  paused hash       a paused cycle is resumed by a touch
-- ARGV[1]  timer id
-- ARGV[2]  payload
-- ARGV[3]  debounce window, ms
-- ARGV[4]  mode: "last", "first" or "all"
-- ARGV[5]  max items kept ("all"), the newest
-- ARGV[6]  max wait, ms (0: none)
-- ARGV[7]  wake channel
-- KEYS[7]  data key of the retired cycle (see below)
-- KEYS[8]  items list of the retired cycle
-- ARGV[8]  item for this touch ("all"; "" otherwise)
-- ARGV[9]  id for the retired cycle: unique per touch, starting with "~c:"
--
-- A cycle whose deadline has passed is complete even if no worker fired it yet (workers down
-- or busy, the server frozen): the quiet period the debounce waits for did elapse. A touch then
-- retires it under ARGV[9], due at its own deadline, so it still fires once, and starts a new
-- cycle. So whether a touch extends a cycle depends on the server's clock only, never on how
-- soon a worker claimed the deadline.
--
-- Returns {new_cycle, due_ms, now_ms, items}
local now = server_now()
local id, mode = ARGV[1], ARGV[4]
local window, max_wait = tonumber(ARGV[3]), tonumber(ARGV[6])

local score = redis.call('ZSCORE', KEYS[4], id)
if score and redis.call('EXISTS', KEYS[2]) == 0 then
  -- An index entry without data (left by a failure): nothing to fire, so it is no cycle. It
  -- must never make a touch fail, nor hold the touch in a cycle that would fire nothing.
  redis.call('ZREM', KEYS[4], id)
  redis.call('DEL', KEYS[3])
  redis.call('HDEL', KEYS[5], id)
  score = false
elseif score and tonumber(score) <= now then
  redis.call('RENAME', KEYS[2], KEYS[7])
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('RENAME', KEYS[3], KEYS[8]) end
  redis.call('ZREM', KEYS[4], id)
  redis.call('ZADD', KEYS[4], score, ARGV[9])
  redis.call('HDEL', KEYS[5], id)
  redis.call('PUBLISH', ARGV[7], score)
  score = false
end
local pending = score or redis.call('HEXISTS', KEYS[6], id) == 1
local due = now + window
local items = 0
if pending then
  if max_wait > 0 then
    -- A pending timer armed by something other than a first touch (a retry of the cycle, or
    -- a cycle older than the task's max_wait) has no first touch yet: this one is it.
    local first = tonumber(redis.call('HGET', KEYS[5], id) or '')
    if not first then
      first = now
      redis.call('HSET', KEYS[5], id, now)
    end
    if due > first + max_wait then due = first + max_wait end
  end
  if mode == 'last' then redis.call('SET', KEYS[2], ARGV[2]) end
else
  redis.call('SET', KEYS[2], ARGV[2])
  redis.call('DEL', KEYS[3])
  if max_wait > 0 then redis.call('HSET', KEYS[5], id, now) end
end
if mode == 'all' then
  items = redis.call('RPUSH', KEYS[3], ARGV[8])
  local keep = tonumber(ARGV[5])
  if items > keep then
    redis.call('LTRIM', KEYS[3], -keep, -1)
    items = keep
  end
end
arm(KEYS[1], KEYS[4], id, due, window, now, ARGV[7])
redis.call('HDEL', KEYS[6], id)
return {pending and 0 or 1, due, now, items}
