-- bury.lua: move a job that cannot or may no longer run to the dead-letter stream.
--
-- KEYS[1]  ready stream
-- KEYS[2]  in-flight hash
-- KEYS[3]  data key
-- KEYS[4]  dead-letter stream
-- KEYS[5]  stats hash
-- ARGV[1]  consumer group name
-- ARGV[2]  ready-stream entry id
-- ARGV[3]  timer id
-- ARGV[4]  payload (raw bytes as delivered)
-- ARGV[5]  task name ("" if unknown)
-- ARGV[6]  reason (one line)
-- ARGV[7]  traceback ("" if none)
-- ARGV[8]  approximate maximum length of the dead-letter stream
--
-- Returns the dead-letter entry id, or false when this delivery no longer owns the timer.
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('HGET', KEYS[2], ARGV[3]) ~= ARGV[2] then
  return false
end
redis.call('HDEL', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[3])
redis.call('HINCRBY', KEYS[5], 'dead', 1)
return redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*',
  'i', ARGV[3], 'p', ARGV[4], 't', ARGV[5], 'r', ARGV[6], 'tb', ARGV[7])
