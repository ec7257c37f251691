#!lua flags=allow-oom
-- bury.lua: move a job that cannot or may no longer run to the dead-letter stream.
-- Only the worker that still owns the entry may do so (XPENDING names the owner).
--
-- KEYS[1]  ready stream
-- KEYS[2]  dead-letter stream
-- KEYS[3]  stats hash
-- ARGV[1]  consumer group name
-- ARGV[2]  ready-stream entry id
-- ARGV[3]  timer id
-- ARGV[4]  payload (raw bytes as delivered)
-- ARGV[5]  task name ("" if unknown)
-- ARGV[6]  reason (one line)
-- ARGV[7]  traceback ("" if none)
-- ARGV[8]  approximate maximum length of the dead-letter stream
-- ARGV[9]  touches of a debounced timer (payload="all"), "" if none
-- ARGV[10] consumer name of the worker settling the delivery
-- ARGV[11] approximate maximum size of the dead-letter stream, bytes: the oldest letters go
--          first (the newest is always kept, however big)
--
-- Returns the dead-letter entry id, or false when this delivery no longer holds the entry.
if not settle(KEYS[1], ARGV[1], ARGV[2], ARGV[10]) then return false end
redis.call('HINCRBY', KEYS[3], 'dead', 1)
local entry = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[8], '*',
  'i', ARGV[3], 'p', ARGV[4], 't', ARGV[5], 'r', ARGV[6], 'tb', ARGV[7], 'a', ARGV[9])
-- MEMORY USAGE estimates from a few sampled nodes: cheap, and close enough for a bound. At
-- most 100 letters go per call, so that a lowered bound is reached over a few calls rather
-- than in one long script.
local max_bytes = tonumber(ARGV[11])
for _ = 1, 100 do
  if redis.call('XLEN', KEYS[2]) <= 1 or redis.call('MEMORY', 'USAGE', KEYS[2]) <= max_bytes then
    break
  end
  local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
  redis.call('XDEL', KEYS[2], oldest[1][1])
end
return entry
