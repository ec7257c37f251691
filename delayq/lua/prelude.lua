-- prelude.lua: code the scripts share, placed after each script's #!lua line (see _scripts.py).
-- Its names (GRACE, HOLD, server_now, earliest, place, arm, settle, payload_*, keep_outcome,
-- ended) are the scripts' own: they never copy it.
--
-- A shadow key outlives its deadline by GRACE ms (SHADOW_GRACE_MS in _keys.py): a timer
-- claimed on time is deleted before it expires, so only a straggler publishes `expired`.
local GRACE = @SHADOW_GRACE_MS@
-- How long the outcome record of a job still under way is kept (OUTCOME_HOLD_MS in
-- _keys.py): a job lost with its server must not keep its record for ever.
local HOLD = @OUTCOME_HOLD_MS@

-- The server's clock, ms: every deadline is set and judged by it, never by a client's clock.
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The earliest deadline in due index `index`, or math.huge when it is empty.
local function earliest(index)
  local head = redis.call('ZRANGE', index, 0, 0, 'WITHSCORES')
  return head[2] and tonumber(head[2]) or math.huge
end

-- Place timer `id` (its data key is the caller's): a shadow key holding `duration` (what a
-- restart arms again) that expires GRACE after `due`, and its due-index entry.
local function place(shadow, index, id, due, duration, now)
  local ttl = due - now
  if ttl < 1 then ttl = 1 end
  redis.call('SET', shadow, duration, 'PX', ttl + GRACE)
  redis.call('ZADD', index, due, id)
end

-- place(), and a new earliest deadline published on `wake`, so that a worker sleeping until a
-- later one wakes for it.
local function arm(shadow, index, id, due, duration, now, wake)
  local head = earliest(index)
  place(shadow, index, id, due, duration, now)
  if due < head then redis.call('PUBLISH', wake, due) end
end

-- Settle a delivery of the ready stream: only the worker that still owns the entry may
-- (XPENDING names the owner; another worker may have taken it over); the entry then leaves
-- the stream. Returns whether it did.
local function settle(stream, group, entry, consumer)
  local owner = redis.call('XPENDING', stream, group, entry, entry, 1)
  if not owner[1] or owner[1][2] ~= consumer or redis.call('XACK', stream, group, entry) == 0 then
    return false
  end
  redis.call('XDEL', stream, entry)
  return true
end


-- A timer's payload is the field `id` of a bucket hash `ref` (`dq:{tag}:b:<n>`, Keys.data),
-- since a field costs far less memory than a key; in a namespace created before buckets,
-- `ref` is the timer's own key (`dq:{tag}:d:<id>`). Scripts reach payloads only through these.
local function bucketed(ref)
  return string.find(ref, '}:b:', 1, true) ~= nil
end

local function payload_get(ref, id)
  if bucketed(ref) then return redis.call('HGET', ref, id) end
  return redis.call('GET', ref)
end

local function payload_set(ref, id, value)
  if bucketed(ref) then
    redis.call('HSET', ref, id, value)
  else
    redis.call('SET', ref, value)
  end
end

-- Stores `value` unless the timer has a payload; returns the payload it had, or false.
local function payload_add(ref, id, value)
  if not bucketed(ref) then return redis.call('SET', ref, value, 'NX', 'GET') end
  local had = redis.call('HGET', ref, id)
  if not had then redis.call('HSET', ref, id, value) end
  return had
end

-- Returns 1 if there was a payload to delete, else 0.
local function payload_del(ref, id)
  if bucketed(ref) then return redis.call('HDEL', ref, id) end
  return redis.call('DEL', ref)
end

local function payload_exists(ref, id)
  if bucketed(ref) then return redis.call('HEXISTS', ref, id) == 1 end
  return redis.call('EXISTS', ref) == 1
end

-- Moves an existing payload from timer `id` to timer `to_id`.
local function payload_move(ref, id, to_ref, to_id)
  if not bucketed(ref) then
    redis.call('RENAME', ref, to_ref)
    return
  end
  redis.call('HSET', to_ref, to_id, redis.call('HGET', ref, id))
  redis.call('HDEL', ref, id)
end


-- A job's outcome record (Keys.outcome: a hash of s = state, a = attempts, t0 / t1 = started /
-- finished ms, w = worker, r = "=" and the result, e / m / tb = the last error's type, message
-- and traceback): `fields` (a flat list) set, then kept `ttl` ms; a ttl of 0 deletes it.
local function keep_outcome(record, fields, ttl)
  if ttl == 0 then
    redis.call('DEL', record)
    return
  end
  redis.call('HSET', record, unpack(fields))
  redis.call('PEXPIRE', record, ttl)
end

-- keep_outcome() for a job that ended, and its origin id told on `channel` (sharded pub/sub in
-- the shard's slot), where waiters listen.
local function ended(record, fields, ttl, channel, id)
  keep_outcome(record, fields, ttl)
  redis.call('SPUBLISH', channel, id)
end
