#!lua flags=allow-oom
-- ack.lua: settle finished deliveries: acknowledge them in the group and drop their entries
-- from the ready stream, in one step (what a MULTI of XACK and XDEL did, in one call), and
-- record each job's success in its outcome record, told to its waiters. A job's on_success
-- callback is armed here, by the acknowledgement that settles its entry only: once.
--
-- KEYS[1]      ready stream
-- KEYS[2]      due index (callbacks)
-- then for each delivery: its job's outcome record; if it has a callback, the callback's
--              shadow key and payload bucket
-- KEYS[#KEYS]  events stream: "succeeded" (after "started" if its start was never recorded)
--              for each job its task wants told, "scheduled" for its callback
-- ARGV[1]      consumer group name
-- ARGV[2]      outcomes channel (sharded, this shard's slot)
-- ARGV[3]      consumer name of the worker
-- ARGV[4]      wake channel (callbacks)
-- ARGV[-4 + 9i .. 4 + 9i]  the i-th delivery: ready-stream entry id; its job's origin id;
--              "=" and the result's msgpack, or "" for none; how long to keep the outcome, ms
--              (0: none, as for a delivery that ran no job); attempts made; when the job
--              started, ms; its task ("" for a delivery that ran no job); its callback's
--              timer id, or "" for none; the callback's payload
-- ARGV[#ARGV]  events spec (prelude: event_spec)
--
-- Returns how many entries were acknowledged (others were settled already).
local entries, now = {}, server_now()
local events, spec = KEYS[#KEYS], event_spec(ARGV[#ARGV])
local acked, k = 0, 3
for a = 5, #ARGV - 1, 9 do
  local record, keep, task, callback = KEYS[k], tonumber(ARGV[a + 3]), ARGV[a + 6], ARGV[a + 7]
  local told = task ~= '' and wants_events(spec, task)
  local state, made, settled
  if told then state, made = unpack(redis.call('HMGET', record, 's', 'a')) end
  if told or callback ~= '' then
    -- Told and followed up once: only by the acknowledgement that settles the entry.
    settled = redis.call('XACK', KEYS[1], ARGV[1], ARGV[a]) == 1
    if settled then acked = acked + 1 end
  end
  entries[#entries + 1] = ARGV[a]
  local fields = {}
  if keep > 0 then  -- otherwise the record goes (keep_outcome): nothing to fill in
    fields = {'s', 'succeeded', 'a', ARGV[a + 4], 't0', ARGV[a + 5], 't1', now, 'w', ARGV[3]}
    if ARGV[a + 2] ~= '' then
      fields[#fields + 1] = 'r'
      fields[#fields + 1] = ARGV[a + 2]
    else
      redis.call('HDEL', record, 'r')
    end
  end
  ended(record, fields, keep, ARGV[2], ARGV[a + 1])
  if told and settled then
    local attempt = tonumber(ARGV[a + 4])
    tell_missed_start(events, spec, task, ARGV[a + 1], attempt, state, made, ARGV[3])
    tell(events, spec, task, 'succeeded', ARGV[a + 1], attempt)
  end
  if callback ~= '' then
    if settled then follow_up(KEYS[k + 1], KEYS[k + 2], KEYS[2], callback, ARGV[a + 8], now,
                              ARGV[4], events, spec) end
    k = k + 2
  end
  k = k + 1
end
acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(entries))
redis.call('XDEL', KEYS[1], unpack(entries))
return acked
