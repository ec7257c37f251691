#!lua flags=allow-oom
-- record_run.lua: note a periodic task's last run in its state, unless the state is gone (the
-- task was removed from the code meanwhile): a plain HSET would bring it back, and with it a
-- task that no worker ever cleans up.
--
-- KEYS[1]  state hash of the task
-- ARGV[1]  tick of the run, ms
-- ARGV[2]  when the run's tick fired, ms
--
-- Returns 1 when recorded, 0 when the state is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_run', ARGV[1], 'last_run_at', ARGV[2])
return 1
