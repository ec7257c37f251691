#!lua flags=allow-oom
-- watch_probe.lua: the watch leader's look at watch timers that are due. Reading each key's
-- time left makes the server expire an overdue key now (its `expired` event is published at
-- once), then a barrier message on the leader's channel carries this moment: every event the
-- leader hears before the barrier happened before the look. Applied in that order (watch.lua
-- "observe"), a timer still due at the barrier was armed for a life that ended unheard.
--
-- KEYS[1]      watch index
-- KEYS[1 + i]  the watched key of the i-th due watch timer
-- ARGV[1]      the leader's barrier channel
-- ARGV[2]      the probe's sequence number
-- ARGV[2 + i]  the i-th watch timer id
--
-- A key still alive with the very deadline of its timer is in the life the timer was armed
-- for, at its last millisecond: it is left out, to be looked at again.
-- Publishes msgpack [sequence, now_ms, id...]; returns {now_ms, ids published}.
local now = server_now()
local message = {tonumber(ARGV[2]), now}
for i = 2, #KEYS do
  local id = ARGV[1 + i]
  local left = redis.call('PTTL', KEYS[i])
  local score = tonumber(redis.call('ZSCORE', KEYS[1], id) or -1)
  if left < 0 or math.abs(now + left - score) > 1 then message[#message + 1] = id end
end
redis.call('PUBLISH', ARGV[1], cmsgpack.pack(message))
return {now, #message - 2}
