#!lua flags=allow-oom
-- forget.lua: delete a watched key's companion data after its handler succeeded
-- (on_expire with delete_data=True), unless it was written again meanwhile.
--
-- KEYS[1]  companion data key
-- ARGV[1]  the value the handler was given
--
-- Returns 1 if deleted, 0 if it had changed or was gone.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
