#!lua flags=allow-oom
-- fire.lua: the one claim through which every path fires timers (deadline, notification, sweep).
-- A timer fires when its due-index entry exists and is due by the server's clock; the entry is
-- removed in the same step, so each timer fires exactly once however many workers call this.
-- The payload moves into the ready-stream entry: from then on the id is free for a new timer.
--
-- KEYS[1]          due index (sorted set of timer id -> due ms)
-- KEYS[2]          ready stream (fired jobs of the default queue and level; a job routed
--                  elsewhere goes to its own queue's level: prelude stream_of)
-- KEYS[3]          stats hash (counters)
-- KEYS[4]          first-touch hash (debounced timers with max_wait)
-- KEYS[5]          the set of queues with streams (stream_of)
-- KEYS[6 + 4i]     shadow key of the i-th timer (i from 0)
-- KEYS[7 + 4i]     payload bucket of the i-th timer (prelude: payload_*)
-- KEYS[8 + 4i]     items list of the i-th timer (debounced, payload="all")
-- KEYS[9 + 4i]     outcome record of the i-th timer's job: "queued" from now on (a retry or
--                  a throttled job keeps what its earlier attempts recorded; any other job
--                  starts anew)
-- KEYS[#KEYS]      events stream: a "fired" event for each job its task wants told
-- ARGV[i]          id of the i-th timer (i from 1)
-- ARGV[#ARGV]      events spec (prelude: event_spec)
--
-- Stream entry fields: i = timer id, p = payload, d = due ms, a = the items (concatenated
-- msgpack objects, oldest first; only when the items list exists).
-- Returns {now_ms, fired, next_due_ms or -1, orphans}
--   fired:   timers moved to the ready stream by this call
--   orphans: index entries without data, removed (counted in stats as repaired_index)
local now = server_now()
local fired, orphans = 0, 0
local events, spec = KEYS[#KEYS], event_spec(ARGV[#ARGV])

for i = 1, #ARGV - 1 do
  local id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= now then
    local base = 2 + 4 * i
    local shadow, data, list = KEYS[base], KEYS[base + 1], KEYS[base + 2]
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[4], id)
    redis.call('DEL', shadow)
    local payload = payload_get(data, id)
    if payload then
      payload_del(data, id)
      local stream = stream_of(KEYS[2], KEYS[5], payload)
      local items = redis.call('LRANGE', list, 0, -1)
      if #items > 0 then
        redis.call('DEL', list)
        redis.call('XADD', stream, '*', 'i', id, 'p', payload, 'd', score,
          'a', table.concat(items))
      else
        redis.call('XADD', stream, '*', 'i', id, 'p', payload, 'd', score)
      end
      -- A retry, or a job that waited for a limit, keeps its attempts and last error; any
      -- other firing starts a new record.
      local state, made = unpack(redis.call('HMGET', KEYS[base + 3], 's', 'a'))
      if state and state ~= 'retrying' and state ~= 'throttled' then
        redis.call('DEL', KEYS[base + 3])
        made = nil
      end
      keep_outcome(KEYS[base + 3], {'s', 'queued'}, HOLD)
      if spec then
        tell(events, spec, payload_task(payload), 'fired', origin_of(id),
             (tonumber(made) or 0) + 1, {'d', score})
      end
      fired = fired + 1
    else
      redis.call('DEL', list)  -- the touches of a cycle whose data was lost
      orphans = orphans + 1
    end
  end
end

if fired > 0 then redis.call('HINCRBY', KEYS[3], 'fired', fired) end
if orphans > 0 then redis.call('HINCRBY', KEYS[3], 'repaired_index', orphans) end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_due = -1
if first[2] then next_due = tonumber(first[2]) end
return {now, fired, next_due, orphans}
