#!lua flags=allow-oom
-- bury.lua: move a job that cannot or may no longer run to the dead-letter stream.
-- Only the worker that still owns the entry may do so (XPENDING names the owner).
--
-- KEYS[1]  ready stream
-- KEYS[2]  dead-letter stream
-- KEYS[3]  stats hash
-- KEYS[4]  outcome record of the job: failed, with the error, told to its waiters
-- KEYS[5]  events stream: "failed" (after "started" if a handler ran and its start was
--          never recorded) if the job's task wants it told; "scheduled" for its callback
-- KEYS[6]  due index (callbacks)
-- KEYS[7], KEYS[8]  its on_failure callback's shadow key and payload bucket, if it has one
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
-- ARGV[12] outcomes channel (sharded, this shard's slot)
-- ARGV[13] how long to keep the outcome, ms
-- ARGV[14] attempts made
-- ARGV[15] when the last attempt started, ms ("" if none ran)
-- ARGV[16] the error's type name ("" when no handler ran: the reason says why)
-- ARGV[17] the job's origin id
-- ARGV[18] the error's message (the reason when no handler ran)
-- ARGV[19] events spec (prelude: event_spec)
-- ARGV[20] wake channel (callbacks)
-- ARGV[21] its on_failure callback's timer id, "" for none; ARGV[22] the callback's payload
--
-- Returns the dead-letter entry id, or false when this delivery no longer holds the entry.
if not settle(KEYS[1], ARGV[1], ARGV[2], ARGV[10]) then return false end
redis.call('HINCRBY', KEYS[3], 'dead', 1)
local spec = event_spec(ARGV[19])
if wants_events(spec, ARGV[5]) then
  local attempt = tonumber(ARGV[14])
  if ARGV[15] ~= '' then
    local state, made = unpack(redis.call('HMGET', KEYS[4], 's', 'a'))
    tell_missed_start(KEYS[5], spec, ARGV[5], ARGV[17], attempt, state, made, ARGV[10])
  end
  tell(KEYS[5], spec, ARGV[5], 'failed', ARGV[17], attempt, {'e', ARGV[16], 'm', ARGV[18]})
end
if ARGV[21] ~= '' then
  follow_up(KEYS[7], KEYS[8], KEYS[6], ARGV[21], ARGV[22], server_now(), ARGV[20], KEYS[5], spec)
end
ended(KEYS[4], {'s', 'failed', 'a', ARGV[14], 't0', ARGV[15], 't1', server_now(),
                'w', ARGV[10], 'e', ARGV[16], 'm', ARGV[18], 'tb', ARGV[7]},
      tonumber(ARGV[13]), ARGV[12], ARGV[17])
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
