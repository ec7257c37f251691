-- cancel.lua: disarm a pending timer so that it never fires.
--
-- KEYS[1]  shadow key
-- KEYS[2]  data key
-- KEYS[3]  due index
-- ARGV[1]  timer id
--
-- Returns 1 if a pending timer was cancelled, 0 if none was pending (never existed, already
-- fired, or running: a running job is not touched).
if redis.call('ZREM', KEYS[3], ARGV[1]) == 1 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
