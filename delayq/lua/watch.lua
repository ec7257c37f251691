#!lua flags=allow-oom
-- watch.lua: apply what the watch leader heard about watched keys (on_expire), in the order the
-- server published it. Only the lease holder may call it: each event is applied exactly once.
--
-- KEYS[1]        the watch lease (must hold ARGV[1])
-- KEYS[2]        watch index: watch timer id -> the watched key's deadline, ms
-- KEYS[3]        ready stream
-- KEYS[4]        stats hash
-- KEYS[5]        paused hash (watch timers are never paused; old entries are dropped)
-- KEYS[6]        the set of queues with streams (a job of another queue: prelude stream_of)
-- ARGV[1]        the leader's token
-- ARGV[2]        "read": the script reads each watched key and companion itself (one server);
--                "given": they live on other nodes (a cluster), and their reads, made just
--                before, are passed in (see below). Events of one key are applied in order
--                either way, so a read a moment early is followed by the event that changed it.
-- read:  KEYS[6 + 3i - 2]  the i-th target's watched key (written by other programs)
--        KEYS[6 + 3i - 1]  payload bucket of its watch timer
--        KEYS[6 + 3i]      its companion data key ("" slot name if none)
--        ARGV[2 + 4i - 3 .. 2 + 4i]  the i-th target's operation, id, payload, seen (below)
-- given: KEYS[6 + i]       payload bucket of the i-th target's watch timer
--        ARGV[2 + 6i - 5 .. 2 + 6i - 2]  its operation, id, payload, seen (below)
--        ARGV[2 + 6i - 1]  the watched key's PEXPIRETIME (its node's clock: the deadline
--                          is the key's own, however late the read arrives here)
--        ARGV[2 + 6i]      its companion's value after a "=", or "" if none (not a string)
-- The operations:
--     write    the key was written (set, expire, persist, rename_to, ...): its timer follows
--              the key's TTL; no TTL removes it; a key gone since waits for its own event
--     scan     a scan found the key: as write, except that a timer already due is left for
--              its probe to judge (the key may have expired and come back unheard)
--     gone     the key went away without expiring (del, rename_from, move_from): no firing;
--              a key there again (moved between nodes, events heard out of order) is followed
--     expired  the key expired: fire once, with the timer's payload (or the default one if
--              no timer was armed for this life)
--     observe  a probe found the timer due at ARGV time with no event moving it since: the
--              life it was armed for ended unheard (flush, lost events); fire, then follow
--              the key's current life
--     (then) the watch timer id; the default payload (the handler's task and arguments);
--     observe: the probe's server time, ms ("" otherwise)
--
-- Stream entry fields (in the ready stream of the job's route): i, p, d as in fire.lua, and w = the companion data when it exists.
-- Returns {now_ms, fired, earliest watch deadline or -1}, or {-1} when ARGV[1] does not
-- hold the lease (nothing was applied).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local now = server_now()
local index, ready = KEYS[2], KEYS[3]
local fired = 0

local given = ARGV[2] == 'given'
local key_stride, arg_stride = 3, 4
if given then key_stride, arg_stride = 1, 6 end

-- The i-th target: its keys, and how to learn its watched key's deadline (ms, or -1 for none,
-- -2 for no key) and its companion's value.
local function target(i)
  local k, a = 6 + key_stride * (i - 1), 2 + arg_stride * (i - 1)
  local t = {op = ARGV[a + 1], id = ARGV[a + 2], payload = ARGV[a + 3], seen = ARGV[a + 4]}
  if given then
    local at, value = tonumber(ARGV[a + 5]), ARGV[a + 6]
    t.data = KEYS[k + 1]
    t.deadline = function() return at end
    t.companion = function() return value ~= '' and string.sub(value, 2) end
    return t
  end
  local watched, companion = KEYS[k + 1], KEYS[k + 3]
  t.data = KEYS[k + 2]
  t.deadline = function()
    local left = redis.call('PTTL', watched)
    if left < 0 then return left end
    return now + math.max(left, 1)
  end
  -- A companion of another type than string is passed as absent, not as an error that
  -- would abort the script halfway.
  t.companion = function()
    return companion ~= '' and redis.call('TYPE', companion).ok == 'string'
      and redis.call('GET', companion)
  end
  return t
end

local function follow(t, keep_due)
  local at = t.deadline()
  if at == -2 then return end
  local score = redis.call('ZSCORE', index, t.id)
  if keep_due and score and tonumber(score) <= now then return end
  if at == -1 then
    redis.call('ZREM', index, t.id)
    payload_del(t.data, t.id)
    return
  end
  payload_set(t.data, t.id, t.payload)
  redis.call('ZADD', index, at, t.id)
end

local function fire(t)
  local score = redis.call('ZSCORE', index, t.id)
  local due = now
  if score and tonumber(score) < now then due = tonumber(score) end
  local payload = payload_get(t.data, t.id) or t.payload
  redis.call('ZREM', index, t.id)
  payload_del(t.data, t.id)
  local value = t.companion()
  local stream = stream_of(ready, KEYS[6], payload)
  if value then
    redis.call('XADD', stream, '*', 'i', t.id, 'p', payload, 'd', due, 'w', value)
  else
    redis.call('XADD', stream, '*', 'i', t.id, 'p', payload, 'd', due)
  end
  fired = fired + 1
end

for i = 1, (#ARGV - 2) / arg_stride do
  local t = target(i)
  local op = t.op
  redis.call('HDEL', KEYS[5], t.id)
  if op == 'write' or op == 'scan' then
    follow(t, op == 'scan')
  elseif op == 'gone' then
    if t.deadline() == -2 then
      redis.call('ZREM', index, t.id)
      payload_del(t.data, t.id)
    else
      follow(t, false)
    end
  elseif op == 'expired' then
    fire(t)
  elseif op == 'observe' then
    local score = redis.call('ZSCORE', index, t.id)
    if score and tonumber(score) <= tonumber(t.seen) then
      fire(t)
      follow(t, false)
    end
  end
end

if fired > 0 then redis.call('HINCRBY', KEYS[4], 'fired_watch', fired) end
local first = redis.call('ZRANGE', index, 0, 0, 'WITHSCORES')
local next_due = -1
if first[2] then next_due = tonumber(first[2]) end
return {now, fired, next_due}
