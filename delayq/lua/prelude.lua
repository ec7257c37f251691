-- prelude.lua: code the scripts share, placed after each script's #!lua line (see _scripts.py).
-- Its names (GRACE, HOLD, LEVELS, server_now, earliest, place, arm, settle, payload_*, keep_outcome,
-- ended, event_spec, wants_events, msgpack_str, payload_task, stream_of, origin_of, tell,
-- tell_missed_start, follow_up) are the scripts' own: they never copy it.
--
-- A shadow key outlives its deadline by GRACE ms (SHADOW_GRACE_MS in _keys.py): a timer
-- claimed on time is deleted before it expires, so only a straggler publishes `expired`.
local GRACE = @SHADOW_GRACE_MS@
-- How long the outcome record of a job still under way is kept (OUTCOME_HOLD_MS in
-- _keys.py): a job lost with its server must not keep its record for ever.
local HOLD = @OUTCOME_HOLD_MS@
-- Priority levels of a queue, 0 to LEVELS - 1 (_route.LEVELS).
local LEVELS = @LEVELS@

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


-- Lifecycle events (_events.py): each script that moves a job on appends one to the shard's
-- events stream (the script's last key) when its spec (the script's last argument) wants
-- them for the job's task. The spec is '' when events are off for every task, else
-- "<maxlen>:<1|0: on for tasks by default>:<1|0: debounce touches too>", then ":<bytes>:<name>"
-- for each task whose setting differs from the default.
local function event_spec(text)
  if text == nil or text == '' then return nil end
  local maxlen, default, touches, at = string.match(text, '^(%d+):([01]):([01])()')
  local spec = {maxlen = maxlen, default = default == '1', touches = touches == '1', differs = {}}
  while at <= #text do
    local len, from = string.match(text, '^:(%d+):()', at)
    len = tonumber(len)
    spec.differs[string.sub(text, from, from + len - 1)] = true
    at = from + len
  end
  return spec
end

local function wants_events(spec, task)
  return spec ~= nil and spec.default ~= (spec.differs[task] == true)
end

-- The msgpack str at byte `at` of `data`, and the position after it; '' and nil if there is
-- none (str 32 is never written: names are shorter).
local function msgpack_str(data, at)
  local b = string.byte(data, at)
  if not b then return '', nil end
  local from, len
  if b >= 0xa0 and b <= 0xbf then
    from, len = at + 1, b - 0xa0
  elseif b == 0xd9 then
    from, len = at + 2, string.byte(data, at + 1)
  elseif b == 0xda then
    from, len = at + 3, string.byte(data, at + 1) * 256 + string.byte(data, at + 2)
  else
    return '', nil
  end
  return string.sub(data, from, from + len - 1), from + len
end

-- A payload's task name, read off its first bytes ([version, task, ...] as msgpack: a fixarray
-- header, a positive fixint, then a str), without decoding the rest.
local function payload_task(payload)
  return (msgpack_str(payload, 3))
end

-- The ready stream a payload's job waits in (Keys.stream): `ready` itself, unless the payload
-- is of format 2 ([2, task, queue, level, ...]: _codec.ROUTED_VERSION); then the stream of its
-- queue's level, and the queue is listed in the set `queues`.
local function stream_of(ready, queues, payload)
  if string.byte(payload, 2) ~= 2 then return ready end
  local _, at = msgpack_str(payload, 3)
  local queue
  if at then queue, at = msgpack_str(payload, at) end
  local level = at and string.byte(payload, at)
  if queue == '' or not level or level >= LEVELS then return ready end  -- not written by delayq
  redis.call('SADD', queues, queue)
  return ready .. ':' .. queue .. ':' .. level
end

-- The id a job was scheduled under: a retry's or re-drive's id cut at its mark
-- (DERIVED_MARKS in _keys.py).
local function origin_of(id)
  local cut = math.min(string.find(id, '#retry-', 1, true) or math.huge,
                       string.find(id, '#redrive-', 1, true) or math.huge)
  if cut == math.huge then return id end
  return string.sub(id, 1, cut - 1)
end

-- Appends event `kind` of job `id` (its origin id) to `stream` if `spec` wants it for `task`;
-- `extra` is a flat list of more fields. Returns whether it did.
local function tell(stream, spec, task, kind, id, attempt, extra)
  if not wants_events(spec, task) then return false end
  local fields = {'k', kind, 'i', id, 't', task, 'a', attempt}
  for _, value in ipairs(extra or {}) do fields[#fields + 1] = value end
  redis.call('XADD', stream, 'MAXLEN', '~', spec.maxlen, '*', unpack(fields))
  return true
end

-- For a script that ends an attempt: its "started" event, if its start was never recorded
-- (a job ending before its start was sent: started.lua skips it), so that every run is told
-- as started. `state` and `made` are the outcome record's before the end is written.
local function tell_missed_start(stream, spec, task, id, attempt, state, made, worker)
  if state == 'running' and made == tostring(attempt) then return end
  tell(stream, spec, task, 'started', id, attempt, {'w', worker})
end

-- Arms a job's callback `id` (worker/_callbacks.py) to fire now, unless it is armed already
-- (the outcome it follows up was settled before: never twice), with its "scheduled" event.
local function follow_up(shadow, data, index, id, payload, now, wake, events, spec)
  if payload_add(data, id, payload) then return end
  arm(shadow, index, id, now, 1, now, wake)
  if spec then tell(events, spec, payload_task(payload), 'scheduled', id, 1, {'d', now}) end
end
