#!lua flags=allow-oom
-- cancel.lua: disarm a pending (or paused) timer so that it never fires.
--
-- KEYS[1]  shadow key
-- KEYS[2]  payload bucket
-- KEYS[3]  items list
-- KEYS[4]  due index
-- KEYS[5]  paused hash
-- KEYS[6]  first-touch hash
-- KEYS[7]  outcome record: cancelled, told to its waiters
-- KEYS[8]  events stream: "cancelled" if the timer's task wants it told
-- ARGV[1]  timer id
-- ARGV[2]  how long to keep the outcome, ms
-- ARGV[3]  outcomes channel (sharded, this shard's slot)
-- ARGV[4]  events spec (prelude: event_spec)
--
-- Returns 1 if a pending or paused timer was cancelled (also one whose index entry was lost
-- and awaits repair), 0 if there was none (never existed, already fired, or cancelled
-- before). A job already running is not touched.
local indexed = redis.call('ZREM', KEYS[4], ARGV[1])
local paused = redis.call('HDEL', KEYS[5], ARGV[1])
local spec, task = event_spec(ARGV[4]), nil
if spec then task = payload_task(payload_get(KEYS[2], ARGV[1]) or '') end
local data = payload_del(KEYS[2], ARGV[1])
if indexed + paused + data == 0 then return 0 end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('HDEL', KEYS[6], ARGV[1])
redis.call('DEL', KEYS[7])
ended(KEYS[7], {'s', 'cancelled', 't1', server_now()}, tonumber(ARGV[2]), ARGV[3], ARGV[1])
if spec then tell(KEYS[8], spec, task, 'cancelled', ARGV[1], 1) end
return 1
