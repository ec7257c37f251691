#!lua flags=allow-oom
-- heartbeat.lua: keep this worker's running jobs from being taken over, without ever taking
-- back a job that another worker has already taken over (as a plain XCLAIM would).
--
-- KEYS[1]  ready stream
-- ARGV[1]  consumer group name
-- ARGV[2]  this worker's consumer name
-- ARGV[3..] ready-stream entry ids of the jobs this worker is running
--
-- Returns the entry ids that are no longer this worker's (taken over or acknowledged).
local lost = {}
for i = 3, #ARGV do
  local entry = ARGV[i]
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], entry, entry, 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    -- Claiming an entry one already owns resets its idle time: that is the heartbeat.
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, entry, 'JUSTID')
  else
    lost[#lost + 1] = entry
  end
end
return lost
