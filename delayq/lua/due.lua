#!lua flags=no-writes
-- due.lua: which timers of a due index are due now, by the server's clock.
-- The worker decides what to claim from the server's own TIME, read in the same step as the
-- index, so a worker whose clock is wrong or has just stepped can never see due timers as
-- future ones (nor the reverse); the reply's clock also re-synchronises the worker's estimate.
--
-- KEYS[1]  due index (sorted set of timer id -> due ms)
-- ARGV[1]  at most this many ids
--
-- Returns {now_ms, earliest_due_ms or -1, id, id, ...}: the due ids, oldest deadline first.
local now = server_now()
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local reply = {now, first[2] and tonumber(first[2]) or -1}
if first[2] and tonumber(first[2]) <= now then
  local ids = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[1]))
  for i = 1, #ids do reply[#reply + 1] = ids[i] end
end
return reply
