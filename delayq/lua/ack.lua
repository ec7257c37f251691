-- ack.lua: acknowledge finished jobs and remove their data.
-- A job's data is deleted only while its timer still points at this delivery, so a late
-- acknowledgement from a worker whose job was re-delivered cannot delete a newer timer.
--
-- KEYS[1]      ready stream
-- KEYS[2]      in-flight hash
-- KEYS[2 + i]  data key of the i-th job
-- ARGV[1]      consumer group name
-- ARGV[2i]     ready-stream entry id of the i-th job
-- ARGV[2i + 1] timer id of the i-th job
--
-- Returns the number of jobs whose data was removed.
local removed = 0
local jobs = (#ARGV - 1) / 2
for i = 1, jobs do
  local entry, id = ARGV[2 * i], ARGV[2 * i + 1]
  redis.call('XACK', KEYS[1], ARGV[1], entry)
  redis.call('XDEL', KEYS[1], entry)
  if redis.call('HGET', KEYS[2], id) == entry then
    redis.call('HDEL', KEYS[2], id)
    redis.call('DEL', KEYS[2 + i])
    removed = removed + 1
  end
end
return removed
