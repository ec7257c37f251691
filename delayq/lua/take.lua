#!lua flags=allow-oom
-- take.lua: deliver up to ARGV[3] new jobs to consumer ARGV[2] of group ARGV[1], from the
-- ready streams in KEYS in their order (a queue's highest priority level first; _keys
-- Keys.streams), so that a job of a higher level is taken before any of a lower one.
-- A stream without the group (flushed, restored from an old snapshot) gets it again.
-- Allowed when memory is full: taking and running jobs is what frees it.
--
-- KEYS[i]   a ready stream
-- ARGV[1]   consumer group
-- ARGV[2]   consumer (the worker)
-- ARGV[3]   how many jobs at most
--
-- Returns a flat list, three items per job: the index of its stream in KEYS, its entry id and
-- its fields. Empty when every stream is: the worker then waits in a blocking XREADGROUP.
local group, consumer, wanted = ARGV[1], ARGV[2], tonumber(ARGV[3])
local taken = {}
for i = 1, #KEYS do
  if wanted <= 0 then break end
  local ok, reply = pcall(redis.call, 'XREADGROUP', 'GROUP', group, consumer,
                          'COUNT', wanted, 'STREAMS', KEYS[i], '>')
  if not ok then
    if not string.find(tostring(reply.err or reply), 'NOGROUP', 1, true) then
      return redis.error_reply(reply.err or tostring(reply))
    end
    redis.call('XGROUP', 'CREATE', KEYS[i], group, '0', 'MKSTREAM')
    reply = false
  end
  if reply then
    for _, entry in ipairs(reply[1][2]) do
      taken[#taken + 1] = i
      taken[#taken + 1] = entry[1]
      taken[#taken + 1] = entry[2] or {}
      wanted = wanted - 1
    end
  end
end
return taken
