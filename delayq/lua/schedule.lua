#!lua
-- schedule.lua: arm timers (each a shadow key + payload + due-index entry), atomically and
-- in order: a timer whose id an earlier one of the same call took finds it pending.
--
-- KEYS[1]  due index         sorted set, member = timer id, score = due time (ms, server clock)
-- KEYS[2]  paused hash       timer id -> "remaining_ms:duration_ms" of paused timers
-- KEYS[1+2i], KEYS[2+2i] for timer i = 1..n:
--          shadow key        value = the armed duration in ms (for restart),
--                            PX = time left + grace
--          payload bucket    holds the msgpack payload (prelude: payload_*)
-- KEYS[#KEYS] events stream: "scheduled" (or "rescheduled": a pending timer replaced) for
--          each timer whose task wants it told
-- ARGV[1]  wake channel: published to when one of these timers becomes the earliest pending
-- ARGV[5i-3 .. 5i+1] for timer i = 1..n:
--          timer id
--          payload (msgpack bytes)
--          "delay" (the next argument is ms from now) or "at" (a unix time in ms)
--          milliseconds, an integer >= 0
--          "1" replace a pending timer with the same id, "0" keep it (idempotent id)
-- ARGV[#ARGV] events spec (prelude: event_spec)
--
-- Returns {now_ms, then for each timer: created, due_ms, stored_payload}
--   created = 1 when armed now; 0 when a timer with this id was already pending (or paused:
--   due_ms is then -1), in which case stored_payload is its payload (false otherwise).
local now = server_now()
local head = earliest(KEYS[1])
local any_paused = redis.call('HLEN', KEYS[2]) > 0
local reply = {now}
local first = math.huge
local events, spec = KEYS[#KEYS], event_spec(ARGV[#ARGV])

for i = 1, (#KEYS - 3) / 2 do
  local shadow, data, a = KEYS[1 + 2 * i], KEYS[2 + 2 * i], 5 * i - 3
  local id = ARGV[a]
  -- Kept (idempotent id): stored only if no timer holds the id, and what it holds is read
  -- in the same command.
  local existing, task, kind
  if spec then
    task = payload_task(ARGV[a + 1])
    if wants_events(spec, task) then
      kind = 'scheduled'
      if ARGV[a + 4] == '1' and redis.call('ZSCORE', KEYS[1], id) then kind = 'rescheduled' end
    end
  end
  if ARGV[a + 4] == '1' then
    payload_set(data, id, ARGV[a + 1])
  else
    existing = payload_add(data, id, ARGV[a + 1])
  end
  if existing then
    local score = redis.call('ZSCORE', KEYS[1], id)
    reply[#reply + 1] = 0
    reply[#reply + 1] = score and tonumber(score) or -1
    reply[#reply + 1] = existing
  else
    local ms = tonumber(ARGV[a + 3])
    local due = ARGV[a + 2] == 'at' and ms or now + ms
    place(shadow, KEYS[1], id, due, math.max(due - now, 1), now)
    if any_paused then redis.call('HDEL', KEYS[2], id) end
    if due < first then first = due end
    if kind then tell(events, spec, task, kind, id, 1, {'d', due}) end
    reply[#reply + 1] = 1
    reply[#reply + 1] = due
    reply[#reply + 1] = false
  end
end

if first < head then redis.call('PUBLISH', ARGV[1], first) end
return reply
