#!lua flags=no-writes
-- outcome.lua: what is known of a job now: its outcome record, else whether its timer is
-- pending or paused.
--
-- KEYS[1]  outcome record
-- KEYS[2]  due index holding the timer id (plain or watch)
-- KEYS[3]  paused hash
-- ARGV[1]  timer id
--
-- Returns the record as a flat list of fields and values; {'s', 'scheduled'} or
-- {'s', 'paused'} when there is none but a timer; {} when nothing is known.
local record = redis.call('HGETALL', KEYS[1])
if #record > 0 then return record end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return {'s', 'scheduled'} end
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return {'s', 'paused'} end
return {}
