#!lua flags=allow-oom
-- started.lua: record that jobs started running (sent by a worker in batches, after the fact).
-- Only a record waiting for this attempt changes: queued or retrying after fewer attempts. One
-- that tells an end, or a retry of this very attempt (it failed before its start was sent),
-- is left as it is.
--
-- KEYS[i]  outcome record of the i-th job
-- ARGV[1]  consumer name of the worker
-- ARGV[2i], ARGV[1 + 2i]  the i-th job: when it started, ms; its attempt (from 1)
--
-- Returns how many records it changed.
local changed = 0
for i = 1, #KEYS do
  local state, made = unpack(redis.call('HMGET', KEYS[i], 's', 'a'))
  local attempt = tonumber(ARGV[1 + 2 * i])
  if not state or ((state == 'queued' or state == 'retrying')
                   and (tonumber(made) or 0) < attempt) then
    keep_outcome(KEYS[i], {'s', 'running', 't0', ARGV[2 * i], 'a', ARGV[1 + 2 * i],
                           'w', ARGV[1]}, HOLD)
    changed = changed + 1
  end
end
return changed
