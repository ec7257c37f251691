#!lua flags=allow-oom
-- renew.lua: extend a lock's lifetime only while this holder still owns it.
--
-- KEYS[1]  the lock (a periodic task's overlap lock)
-- ARGV[1]  the holder's token (the ready-stream entry id of its run)
-- ARGV[2]  new lifetime, ms
--
-- Returns 1 if renewed, 0 if the lock is gone or held by someone else.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
