#!lua
-- redrive.lua: take one dead letter off the dead-letter stream and arm it again as a timer.
--
-- KEYS[1]  dead-letter stream
-- KEYS[2]  shadow key
-- KEYS[3]  payload bucket
-- KEYS[4]  due index
-- KEYS[5]  items list
-- KEYS[6]  events stream: "scheduled" if the timer's task wants it told
-- ARGV[1]  dead-letter entry id
-- ARGV[2]  timer id
-- ARGV[3]  payload (attempt reset)
-- ARGV[4]  wake channel
-- ARGV[5]  touches of a debounced timer (payload="all"), "" if none
-- ARGV[6]  events spec (prelude: event_spec)
--
-- Returns 1 when re-armed, 0 when the entry is gone, -1 when a timer with this id is pending
-- (the dead letter is then left in place).
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return 0 end
if payload_exists(KEYS[3], ARGV[2]) then return -1 end
local now = server_now()
redis.call('XDEL', KEYS[1], ARGV[1])
payload_set(KEYS[3], ARGV[2], ARGV[3])
arm(KEYS[2], KEYS[4], ARGV[2], now, 1, now, ARGV[4])
if ARGV[5] ~= '' then
  redis.call('DEL', KEYS[5])
  redis.call('RPUSH', KEYS[5], ARGV[5])
end
local spec = event_spec(ARGV[6])
if spec then
  tell(KEYS[6], spec, payload_task(ARGV[3]), 'scheduled', origin_of(ARGV[2]), 1, {'d', now})
end
return 1
