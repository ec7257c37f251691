#!lua flags=allow-oom
-- limits.lua: the concurrency slots and rate tokens of limited tasks (_limits.py), for the
-- scopes of one shard, many operations per call, applied in order.
--
-- A concurrency scope has a sorted set of slots (member -> lease end, ms): a running job's
-- holder ("<entry id>:<timer id>"), renewed with its worker's heartbeats, or "w:<timer id>"
-- for a slot handed to a waiting job that is on its way. A job finding no slot joins the
-- scope's line (timer id -> place): a freed slot goes to the head of the line, never to a job
-- arriving later. A rate scope keeps its theoretical arrival time (GCRA) and, for each job
-- that was told when to come back, the time it reserved.
--
-- Each operation takes 2 keys and 5 arguments:
--   acquire  KEYS slots, line      ARGV 'a', holder, timer id, limit, lease ms
--   release  KEYS slots, line      ARGV 'r', holder, limit, lease ms, ''
--   renew    KEYS slots, line      ARGV 'n', holder, lease ms, '', ''
--   token    KEYS tat, reserved    ARGV 't', timer id, interval ms, tolerance ms, hold ms
--   rename   KEYS slots, line      ARGV 'm', old timer id, new timer id, '1', ''
--            or KEYS tat, reserved ARGV 'm', old timer id, new timer id, '0', ''
--            (a job re-armed under another id than the one it waits under)
--
-- Returns, per operation, {status, ms, timer ids to wake...}:
--   acquire  {1, 0, ...} it holds a slot; {0, come back in ms, ...} it waits in line
--   release  {1, 0, ...}          renew  {1 held | 0 it was gone: held again, 0}
--   token    {1, 0} it may run now; {1, ms} its worker keeps it and runs it in ms (at most
--            hold ms); {0, run in ms} its token is reserved for then, for its timer
--   rename   {1, 0}
-- "to wake": waiting jobs just handed a freed slot, whose timers the caller moves to now.
local now = server_now()
-- Forgotten reservations (their job was cancelled while it waited) go after this long.
local RESERVED_FOR = 86400000

local function expire(slots)
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
end

-- Hands free slots to the head of the line, in order: the timer ids to wake.
local function hand_out(slots, line, limit, lease, woken)
  while redis.call('ZCARD', slots) < limit do
    local head = redis.call('ZPOPMIN', line)
    if not head[1] then break end
    redis.call('ZADD', slots, now + lease, 'w:' .. head[1])
    woken[#woken + 1] = head[1]
  end
end

-- Joins the line at its end, or keeps the place it had.
local function join(line, id)
  if redis.call('ZSCORE', line, id) then return end
  local last = redis.call('ZRANGE', line, -1, -1, 'WITHSCORES')
  local place = now
  if last[2] and tonumber(last[2]) >= place then place = tonumber(last[2]) + 1 end
  redis.call('ZADD', line, place, id)
end

local function acquire(slots, line, holder, id, limit, lease)
  expire(slots)
  if redis.call('ZSCORE', slots, holder) or redis.call('ZREM', slots, 'w:' .. id) == 1 then
    redis.call('ZADD', slots, now + lease, holder)  -- its own (taken over) or handed to it
    redis.call('ZREM', line, id)
    return {1, 0}
  end
  if redis.call('ZCARD', line) == 0 and redis.call('ZCARD', slots) < limit then
    redis.call('ZADD', slots, now + lease, holder)  -- nobody waits: the common case
    return {1, 0}
  end
  join(line, id)
  local woken, others = {}, {}
  hand_out(slots, line, limit, lease, woken)
  local mine = false
  for _, w in ipairs(woken) do
    if w == id then mine = true else others[#others + 1] = w end
  end
  if mine then
    redis.call('ZREM', slots, 'w:' .. id)
    redis.call('ZADD', slots, now + lease, holder)
    return {1, 0, unpack(others)}
  end
  -- No release will wake it if a holder died: it looks again when the first lease could end.
  -- Those further back look a lease later still; a release wakes them in turn anyway.
  local first = redis.call('ZRANGE', slots, 0, 0, 'WITHSCORES')
  local back = tonumber(first[2]) or now
  if redis.call('ZRANK', line, id) >= limit then back = back + lease end
  return {0, math.max(1, back - now), unpack(others)}
end

local function release(slots, line, holder, limit, lease)
  redis.call('ZREM', slots, holder)
  if redis.call('ZCARD', line) == 0 then return {1, 0} end  -- nobody waits
  expire(slots)
  local woken = {}
  hand_out(slots, line, limit, lease, woken)
  return {1, 0, unpack(woken)}
end

local function token(tat_key, reserved, id, interval, tolerance, hold)
  local held = redis.call('ZSCORE', reserved, id)
  if held then
    if tonumber(held) > now then return {0, math.ceil(tonumber(held) - now)} end
    redis.call('ZREM', reserved, id)
    return {1, 0}
  end
  local tat = tonumber(redis.call('GET', tat_key)) or 0
  if tat < now then tat = now end
  local next_tat = tat + interval
  local at = next_tat - tolerance
  redis.call('SET', tat_key, string.format('%.3f', next_tat), 'PX',
             math.ceil(next_tat - now) + 1000)
  if at <= now then return {1, 0} end
  -- Soon enough for its worker to keep it until then: nothing to remember here.
  if at - now <= hold then return {1, math.ceil(at - now)} end
  redis.call('ZREMRANGEBYSCORE', reserved, '-inf', now - RESERVED_FOR)
  redis.call('ZADD', reserved, at, id)
  return {0, math.ceil(at - now)}
end

local function rename(slots, line, old, new, has_slots)
  local place = redis.call('ZSCORE', line, old)
  if place then
    redis.call('ZREM', line, old)
    redis.call('ZADD', line, place, new)
  end
  if has_slots then
    local lease = redis.call('ZSCORE', slots, 'w:' .. old)
    if lease then
      redis.call('ZREM', slots, 'w:' .. old)
      redis.call('ZADD', slots, lease, 'w:' .. new)
    end
  end
  return {1, 0}
end

local replies = {}
for i = 0, #KEYS / 2 - 1 do
  local k1, k2 = KEYS[2 * i + 1], KEYS[2 * i + 2]
  local op, a, b, c, d = ARGV[5 * i + 1], ARGV[5 * i + 2], ARGV[5 * i + 3], ARGV[5 * i + 4],
                         ARGV[5 * i + 5]
  local reply
  if op == 'a' then
    reply = acquire(k1, k2, a, b, tonumber(c), tonumber(d))
  elseif op == 'r' then
    reply = release(k1, k2, a, tonumber(b), tonumber(c))
  elseif op == 'n' then
    -- A holder missing here was forgotten (its lease ran out unrenewed, or the server lost
    -- writes): its run still goes on, so it counts again, and no one else takes its place.
    reply = {redis.call('ZADD', k1, now + tonumber(b), a) == 0 and 1 or 0, 0}
  elseif op == 't' then
    reply = token(k1, k2, a, tonumber(b), tonumber(c), tonumber(d))
  elseif op == 'm' then
    reply = rename(k1, k2, a, b, c == '1')
  else
    return redis.error_reply('limits.lua: unknown operation ' .. tostring(op))
  end
  replies[#replies + 1] = reply
end
return replies
