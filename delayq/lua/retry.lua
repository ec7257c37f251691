#!lua flags=allow-oom
-- retry.lua: acknowledge a failed delivery and re-arm its job as a timer (new payload with the
-- next attempt number), in one step. Only the delivery that still holds the entry may do so:
-- a worker whose job was meanwhile taken over by another (XPENDING names the owner) may not.
--
-- KEYS[1]  shadow key of the timer id
-- KEYS[2]  payload bucket of the timer id
-- KEYS[3]  due index
-- KEYS[4]  ready stream
-- KEYS[5]  stats hash
-- KEYS[6]  shadow key of the fallback id
-- KEYS[7]  payload bucket of the fallback id
-- KEYS[8]  items list of the timer id
-- KEYS[9]  items list of the fallback id
-- KEYS[10] outcome record of the job
-- KEYS[11] events stream: "retried" (after "started" if its start was never recorded) if
--          the job's task wants it told
-- ARGV[1]  consumer group name
-- ARGV[2]  ready-stream entry id of the failed delivery
-- ARGV[3]  timer id
-- ARGV[4]  new payload
-- ARGV[5]  delay before the next attempt, ms
-- ARGV[6]  wake channel
-- ARGV[7]  fallback id, used when a new timer with the same id is already pending (e.g. the
--          next cycle of a debounced timer): the retry must not replace it
-- ARGV[8]  touches of a debounced timer (payload="all"), "" if none: kept for the retry
-- ARGV[9]  consumer name of the worker settling the delivery
-- ARGV[10] attempts made
-- ARGV[11] the failure's type name, "" when the job is not retried for a failure (it waits
--          for a periodic task's previous run): the outcome record then stays as it is
-- ARGV[12] the failure's message
-- ARGV[13] the job's task
-- ARGV[14] events spec (prelude: event_spec)
-- ARGV[15] why the job waits when it is throttled (a concurrency or rate limit: no attempt,
--          no failure), else ""
-- KEYS[12] woken mark of the timer id (wake.lua): a throttled job handed a slot before it
--          was re-armed fires now
--
-- Returns {due_ms, id} when re-armed, {-1, ""} when this delivery no longer holds the entry.
if not settle(KEYS[4], ARGV[1], ARGV[2], ARGV[9]) then return {-1, ''} end
local id, shadow, data, list = ARGV[3], KEYS[1], KEYS[2], KEYS[8]
if payload_exists(data, id) then
  id, shadow, data, list = ARGV[7], KEYS[6], KEYS[7], KEYS[9]
end
if ARGV[8] ~= '' then
  redis.call('DEL', list)
  redis.call('RPUSH', list, ARGV[8])
end
local now = server_now()
local delay = tonumber(ARGV[5])
local throttled = ARGV[15] ~= ''
if throttled and redis.call('DEL', KEYS[12]) == 1 then delay = 0 end
if delay < 1 then delay = 1 end
local due = now + delay
payload_set(data, id, ARGV[4])
arm(shadow, KEYS[3], id, due, delay, now, ARGV[6])
redis.call('HINCRBY', KEYS[5], throttled and 'throttled' or 'retried', 1)
if throttled then
  local spec = event_spec(ARGV[14])
  tell(KEYS[11], spec, ARGV[13], 'throttled', origin_of(ARGV[3]), tonumber(ARGV[10]),
       {'pm', ARGV[15], 'd', due})
  keep_outcome(KEYS[10], {'s', 'throttled', 'why', ARGV[15]}, HOLD)
elseif ARGV[11] ~= '' then
  local spec = event_spec(ARGV[14])
  if wants_events(spec, ARGV[13]) then
    local state, made = unpack(redis.call('HMGET', KEYS[10], 's', 'a'))
    local origin, attempt = origin_of(ARGV[3]), tonumber(ARGV[10])
    tell_missed_start(KEYS[11], spec, ARGV[13], origin, attempt, state, made, ARGV[9])
    tell(KEYS[11], spec, ARGV[13], 'retried', origin, attempt,
         {'e', ARGV[11], 'm', ARGV[12], 'd', due})
  end
  keep_outcome(KEYS[10], {'s', 'retrying', 'a', ARGV[10], 'e', ARGV[11], 'm', ARGV[12]}, HOLD)
end
return {due, id}
