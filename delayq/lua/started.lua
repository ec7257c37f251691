#!lua flags=allow-oom
-- started.lua: record that jobs started running (sent by a worker in batches, after the fact).
-- Only a record waiting for this attempt changes: queued or retrying after fewer attempts. One
-- that tells an end, or a retry of this very attempt (it failed before its start was sent),
-- is left as it is.
--
-- KEYS[i]      outcome record of the i-th job
-- KEYS[#KEYS]  events stream: a "started" event for each job its task wants told
-- ARGV[1]      consumer name of the worker
-- ARGV[4i - 2 .. 4i + 1]  the i-th job: when it started, ms; its attempt (from 1); its task;
--              its origin id
-- ARGV[#ARGV]  events spec (prelude: event_spec)
--
-- Returns how many records it changed.
local changed = 0
local events, spec = KEYS[#KEYS], event_spec(ARGV[#ARGV])
for i = 1, #KEYS - 1 do
  local a = 4 * i - 2
  local state, made, by = unpack(redis.call('HMGET', KEYS[i], 's', 'a', 'w'))
  local attempt = tonumber(ARGV[a + 1])
  if not state or ((state == 'queued' or state == 'retrying')
                   and (tonumber(made) or 0) < attempt) then
    if state == 'retrying' then redis.call('HDEL', KEYS[i], 'p', 'pm') end  -- the last attempt's
    keep_outcome(KEYS[i], {'s', 'running', 't0', ARGV[a], 'a', ARGV[a + 1], 'w', ARGV[1]}, HOLD)
    changed = changed + 1
    tell(events, spec, ARGV[a + 2], 'started', ARGV[a + 3], attempt, {'w', ARGV[1]})
  elseif state == 'running' and made == ARGV[a + 1] and by ~= ARGV[1] then
    -- Another worker started this attempt before: this is a re-delivery (the other was
    -- taken for dead), which readers see as a second start.
    tell(events, spec, ARGV[a + 2], 'started', ARGV[a + 3], attempt, {'w', ARGV[1]})
  end
end
return changed
