#!lua
-- touch.lua: touches of debounced timers, in order. Each arms its timer, or re-arms it if its
-- cycle is still pending: it fires `seconds` after the last touch (at most `max_wait` after
-- the first touch of the cycle). A cycle is pending while its due-index entry exists; once
-- fired (entry removed by fire.lua), the next touch starts a new cycle. So a touch racing the
-- firing either lands in the pending cycle or arms the next one: never lost, never fired twice.
--
-- KEYS[1]  due index
-- KEYS[2]  first-touch hash  timer id -> first touch of the cycle, ms (max_wait only)
-- KEYS[3]  paused hash       a paused cycle is resumed by a touch
-- KEYS[5i-1 .. 5i+3] for touch i = 1..n:
--          shadow key        value = `seconds` in ms, PX = time left + grace
--          payload bucket    the payload ("last": newest touch, "first": first touch,
--                            "all": the call's task, the touches are in the items list)
--          items list        "all" only: one msgpack item per touch, newest last
--          payload bucket of the retired cycle (see below)
--          items list of the retired cycle
-- KEYS[#KEYS] events stream: "scheduled" for each touch that starts a cycle (and, if the
--          spec asks for touches, "rescheduled" for each that moves one), if its task wants it
-- ARGV[1]  wake channel
-- ARGV[8i-6 .. 8i+1] for touch i = 1..n:
--          timer id
--          payload
--          debounce window, ms
--          mode: "last", "first" or "all"
--          max items kept ("all"), the newest
--          max wait, ms (0: none)
--          item for this touch ("all"; "" otherwise)
--          id for the retired cycle: unique per touch, starting with "~c:"
-- ARGV[#ARGV] events spec (prelude: event_spec)
--
-- A cycle whose deadline has passed is complete even if no worker fired it yet (workers down
-- or busy, the server frozen): the quiet period the debounce waits for did elapse. A touch then
-- retires it under its retired-cycle id, due at its own deadline, so it still fires once, and
-- starts a new cycle. So whether a touch extends a cycle depends on the server's clock only,
-- never on how soon a worker claimed the deadline.
--
-- Returns {now_ms, then for each touch: new_cycle, due_ms, items}
local now = server_now()
local index, firsts, paused = KEYS[1], KEYS[2], KEYS[3]
local head_due = earliest(index)
local any_paused = redis.call('HLEN', paused) > 0
local nudge = math.huge  -- the earliest deadline to publish on the wake channel, if any

-- A cycle of `id` whose deadline passed is retired under `retired` (data and items renamed),
-- where it still fires once; an index entry without data (left by a failure) is dropped, since
-- it would fire nothing. Returns whether a cycle of `id` is still pending.
local function pending_cycle(id, data, items, retired_data, retired_items, retired)
  local score = redis.call('ZSCORE', index, id)
  if score and not payload_exists(data, id) then
    redis.call('ZREM', index, id)
    redis.call('DEL', items)
    redis.call('HDEL', firsts, id)
    score = false
  elseif score and tonumber(score) <= now then
    payload_move(data, id, retired_data, retired)
    if redis.call('EXISTS', items) == 1 then redis.call('RENAME', items, retired_items) end
    redis.call('ZREM', index, id)
    redis.call('ZADD', index, score, retired)
    redis.call('HDEL', firsts, id)
    nudge = math.min(nudge, tonumber(score))
    score = false
  end
  return score or (any_paused and redis.call('HEXISTS', paused, id) == 1)
end

local reply = {now}
local events, spec = KEYS[#KEYS], event_spec(ARGV[#ARGV])
for i = 1, (#KEYS - 4) / 5 do
  local k, a = 5 * i - 1, 8 * i - 6
  local shadow, data, items = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local id, mode = ARGV[a], ARGV[a + 3]
  local window, max_wait = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 5])
  local pending = pending_cycle(id, data, items, KEYS[k + 3], KEYS[k + 4], ARGV[a + 7])
  local due = now + window
  local kept = 0
  if pending then
    if max_wait > 0 then
      -- A pending timer armed by something other than a first touch (a retry of the cycle,
      -- or a cycle older than the task's max_wait) has no first touch yet: this one is it.
      local first = tonumber(redis.call('HGET', firsts, id) or '')
      if not first then
        first = now
        redis.call('HSET', firsts, id, now)
      end
      if due > first + max_wait then due = first + max_wait end
    end
    if mode == 'last' then payload_set(data, id, ARGV[a + 1]) end
  else
    payload_set(data, id, ARGV[a + 1])
    redis.call('DEL', items)
    if max_wait > 0 then redis.call('HSET', firsts, id, now) end
  end
  if mode == 'all' then
    kept = redis.call('RPUSH', items, ARGV[a + 6])
    local keep = tonumber(ARGV[a + 4])
    if kept > keep then
      redis.call('LTRIM', items, -keep, -1)
      kept = keep
    end
  end
  place(shadow, index, id, due, window, now)
  if any_paused then redis.call('HDEL', paused, id) end
  if due < head_due then nudge = math.min(nudge, due) end
  if spec and (not pending or spec.touches) then
    tell(events, spec, payload_task(ARGV[a + 1]), pending and 'rescheduled' or 'scheduled', id,
         1, {'d', due})
  end
  reply[#reply + 1] = pending and 0 or 1
  reply[#reply + 1] = due
  reply[#reply + 1] = kept
end

if nudge < math.huge then redis.call('PUBLISH', ARGV[1], nudge) end
return reply
