#!lua flags=allow-oom
-- watch_lease.lua: the watch leader's lease. One worker at a time hears the watched keys'
-- events and runs watch.lua, so that events are applied once each and in the order the
-- server published them.
--
-- KEYS[1]  the lease: the leader's token, with a lifetime
-- KEYS[2]  the epoch: a counter of leaderships
-- ARGV[1]  "acquire", "renew" or "release"
-- ARGV[2]  this worker's token
-- ARGV[3]  lifetime, ms
-- ARGV[4]  the epoch this worker was leader in ("renew"; "" otherwise)
--
-- Returns the epoch of the leadership held after the call, 0 if none.
-- A renewal finding the lease expired takes it back if nobody held it since (same epoch):
-- a leader that was stopped for a while has not missed any event its subscription kept.
local op, token, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local holder = redis.call('GET', KEYS[1])
if op == 'release' then
  if holder == token then redis.call('DEL', KEYS[1]) end
  return 0
end
if holder == token then
  redis.call('PEXPIRE', KEYS[1], ttl)
  return tonumber(redis.call('GET', KEYS[2]) or 0)
end
if holder then return 0 end
if op == 'renew' then
  if redis.call('GET', KEYS[2]) ~= ARGV[4] then return 0 end
  redis.call('SET', KEYS[1], token, 'PX', ttl)
  return tonumber(ARGV[4])
end
redis.call('SET', KEYS[1], token, 'PX', ttl)
return redis.call('INCR', KEYS[2])
