#!lua flags=allow-oom,allow-cross-slot-keys
-- watch_touch.lua: watch_probe.lua's look on a cluster, run on one node for the watched keys
-- that node holds. Reading each key makes the node expire an overdue key now (its `expired`
-- event goes out at once); the barrier, published next on the leader's channel for this
-- node, then follows every event of these keys that happened before the look.
--
-- The keys are arguments, not KEYS: they hash to many slots of this node, which a script may
-- read only undeclared (flag allow-cross-slot-keys). A key this node no longer holds fails
-- the script before the barrier: the look is made again once the leader knows the new layout.
--
-- ARGV[1]      the leader's barrier channel for this node
-- ARGV[2]      the probe's sequence number
-- ARGV[3]      the probe's time, ms (the watch index's clock)
-- ARGV[1 + 3i .. 3 + 3i]  the i-th watch timer id, its watched key, the timer's deadline
--
-- A timer armed on cluster nodes holds its key's own deadline (watch.lua "given"): a key
-- alive with that very deadline is in the life the timer was armed for, at its last
-- millisecond by this node's clock, and is left out, to be looked at again.
-- Publishes msgpack [sequence, probe time, id...] when it judges any; returns
-- {ids published, ms until the first key left out expires or -1}.
local message = {tonumber(ARGV[2]), tonumber(ARGV[3])}
local wait = -1
for i = 4, #ARGV, 3 do
  local id, key, score = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local at = redis.call('PEXPIRETIME', key)
  if at >= 0 and at == score then
    local left = redis.call('PTTL', key)
    if wait < 0 or left < wait then wait = left end
  else
    message[#message + 1] = id
  end
end
if #message > 2 then redis.call('PUBLISH', ARGV[1], cmsgpack.pack(message)) end
return {#message - 2, wait}
