#!lua flags=allow-oom
-- progress.lua: record how far running jobs are (sent by a worker in batches, the latest of
-- each job), and tell their waiters on the outcomes channel. Only a record running this very
-- attempt changes: one that tells an end or a later attempt is left as it is, so late progress
-- never undoes what came after it.
--
-- KEYS[i]      outcome record of the i-th job
-- KEYS[#KEYS]  events stream: a "progress" event for each job its task wants told
-- ARGV[1]      outcomes channel (sharded, this shard's slot)
-- ARGV[5i - 3 .. 5i + 1]  the i-th job: its origin id; its attempt (from 1); the fraction
--              done, 0 to 1; a message, or '' for none; its task
-- ARGV[#ARGV]  events spec (prelude: event_spec)
--
-- Returns how many records it changed.
local spec, changed = event_spec(ARGV[#ARGV]), 0
for a = 2, #ARGV - 1, 5 do
  local record = KEYS[(a + 3) / 5]
  local state, made = unpack(redis.call('HMGET', record, 's', 'a'))
  if state == 'running' and made == ARGV[a + 1] then
    if ARGV[a + 3] == '' then
      redis.call('HDEL', record, 'pm')
      redis.call('HSET', record, 'p', ARGV[a + 2])
    else
      redis.call('HSET', record, 'p', ARGV[a + 2], 'pm', ARGV[a + 3])
    end
    redis.call('SPUBLISH', ARGV[1], ARGV[a])
    tell(KEYS[#KEYS], spec, ARGV[a + 4], 'progress', ARGV[a], ARGV[a + 1],
         {'p', ARGV[a + 2], 'pm', ARGV[a + 3]})
    changed = changed + 1
  end
end
return changed
