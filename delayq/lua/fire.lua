-- fire.lua: the one claim through which every path fires timers (deadline, notification, sweep).
-- A timer fires when its due-index entry exists and is due by the server's clock; the entry is
-- removed in the same step, so each timer fires exactly once however many workers call this.
-- The payload moves into the ready-stream entry: from then on the id is free for a new timer.
--
-- KEYS[1]          due index (sorted set of timer id -> due ms)
-- KEYS[2]          ready stream (fired jobs)
-- KEYS[3]          stats hash (counters)
-- KEYS[4 + 2i]     shadow key of the i-th timer (i from 0)
-- KEYS[5 + 2i]     data key of the i-th timer
-- ARGV[i + 1]      id of the i-th timer
--
-- Returns {now_ms, fired, next_due_ms or -1, orphans}
--   fired:   timers moved to the ready stream by this call
--   orphans: index entries without data, removed (counted in stats as repaired_index)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fired, orphans = 0, 0

for i = 1, #ARGV do
  local id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= now then
    local shadow, data = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
    redis.call('ZREM', KEYS[1], id)
    redis.call('DEL', shadow)
    local payload = redis.call('GET', data)
    if payload then
      redis.call('DEL', data)
      redis.call('XADD', KEYS[2], '*', 'i', id, 'p', payload, 'd', score)
      fired = fired + 1
    else
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
