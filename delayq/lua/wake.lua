#!lua flags=allow-oom
-- wake.lua: a waiting job was handed a concurrency slot (limits.lua): its timer fires now.
-- A job not yet re-armed (it is still being throttled by its worker) finds a mark instead,
-- and retry.lua re-arms it for now.
--
-- KEYS[1]  shadow key of the timer
-- KEYS[2]  due index
-- KEYS[3]  woken mark of the timer
-- ARGV[1]  timer id
-- ARGV[2]  wake channel
-- ARGV[3]  how long the mark lasts, ms
--
-- Returns 1 if the timer was pending, else 0 (the mark was left).
local id = ARGV[1]
if not redis.call('ZSCORE', KEYS[2], id) then
  redis.call('SET', KEYS[3], 1, 'PX', ARGV[3])
  return 0
end
local now = server_now()
arm(KEYS[1], KEYS[2], id, now, tonumber(redis.call('GET', KEYS[1])) or 1, now, ARGV[2])
return 1
