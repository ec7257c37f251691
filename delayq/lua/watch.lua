#!lua flags=allow-oom
-- watch.lua: apply what the watch leader heard about watched keys (on_expire), in the order the
-- server published it. Only the lease holder may call it: each event is applied exactly once.
--
-- KEYS[1]        the watch lease (must hold ARGV[1])
-- KEYS[2]        watch index: watch timer id -> the watched key's deadline, ms
-- KEYS[3]        ready stream
-- KEYS[4]        stats hash
-- KEYS[5]        paused hash (watch timers are never paused; old entries are dropped)
-- KEYS[5 + 3i - 2]  the i-th target's watched key (written by other programs)
-- KEYS[5 + 3i - 1]  payload bucket of its watch timer
-- KEYS[5 + 3i]      its companion data key ("" slot name if none)
-- ARGV[1]        the leader's token
-- ARGV[1 + 4i - 3]  the i-th target's operation, one of:
--     write    the key was written (set, expire, persist, rename_to, ...): its timer follows
--              the key's TTL; no TTL removes it; a key gone since waits for its own event
--     scan     a scan found the key: as write, except that a timer already due is left for
--              its probe to judge (the key may have expired and come back unheard)
--     gone     the key went away without expiring (del, rename_from, move_from): no firing
--     expired  the key expired: fire once, with the timer's payload (or the default one if
--              no timer was armed for this life)
--     observe  a probe found the timer due at ARGV time with no event moving it since: the
--              life it was armed for ended unheard (flush, lost events); fire, then follow
--              the key's current life
-- ARGV[1 + 4i - 2]  watch timer id
-- ARGV[1 + 4i - 1]  default payload (the handler's task and arguments)
-- ARGV[1 + 4i]      observe: the probe's server time, ms ("" otherwise)
--
-- Stream entry fields: i, p, d as in fire.lua, and w = the companion data when it exists.
-- Returns {now_ms, fired, earliest watch deadline or -1}, or {-1} when ARGV[1] does not
-- hold the lease (nothing was applied).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local now = server_now()
local index, ready = KEYS[2], KEYS[3]
local fired = 0

local function follow(watched, data, id, payload, keep_due)
  local left = redis.call('PTTL', watched)
  if left == -2 then return end
  local score = redis.call('ZSCORE', index, id)
  if keep_due and score and tonumber(score) <= now then return end
  if left == -1 then
    redis.call('ZREM', index, id)
    payload_del(data, id)
    return
  end
  payload_set(data, id, payload)
  redis.call('ZADD', index, now + math.max(left, 1), id)
end

local function fire(data, companion, id, payload)
  local score = redis.call('ZSCORE', index, id)
  local due = now
  if score and tonumber(score) < now then due = tonumber(score) end
  payload = payload_get(data, id) or payload
  redis.call('ZREM', index, id)
  payload_del(data, id)
  local value = false
  -- A companion of another type than string is passed as absent, not as an error that
  -- would abort the script halfway.
  if companion ~= '' and redis.call('TYPE', companion).ok == 'string' then
    value = redis.call('GET', companion)
  end
  if value then
    redis.call('XADD', ready, '*', 'i', id, 'p', payload, 'd', due, 'w', value)
  else
    redis.call('XADD', ready, '*', 'i', id, 'p', payload, 'd', due)
  end
  fired = fired + 1
end

for i = 1, (#ARGV - 1) / 4 do
  local op, id, payload, seen = ARGV[4 * i - 2], ARGV[4 * i - 1], ARGV[4 * i], ARGV[4 * i + 1]
  local watched, data, companion = KEYS[3 * i + 3], KEYS[3 * i + 4], KEYS[3 * i + 5]
  redis.call('HDEL', KEYS[5], id)
  if op == 'write' or op == 'scan' then
    follow(watched, data, id, payload, op == 'scan')
  elseif op == 'gone' then
    redis.call('ZREM', index, id)
    payload_del(data, id)
  elseif op == 'expired' then
    fire(data, companion, id, payload)
  elseif op == 'observe' then
    local score = redis.call('ZSCORE', index, id)
    if score and tonumber(score) <= tonumber(seen) then
      fire(data, companion, id, payload)
      follow(watched, data, id, payload, false)
    end
  end
end

if fired > 0 then redis.call('HINCRBY', KEYS[4], 'fired_watch', fired) end
local first = redis.call('ZRANGE', index, 0, 0, 'WITHSCORES')
local next_due = -1
if first[2] then next_due = tonumber(first[2]) end
return {now, fired, next_due}
