#!lua flags=allow-oom
-- ack.lua: settle finished deliveries: acknowledge them in the group and drop their entries
-- from the ready stream, in one step (what a MULTI of XACK and XDEL did, in one call), and
-- record each job's success in its outcome record, told to its waiters.
--
-- KEYS[1]      ready stream
-- KEYS[1 + i]  outcome record of the i-th delivery's job
-- ARGV[1]      consumer group name
-- ARGV[2]      outcomes channel (sharded, this shard's slot)
-- ARGV[3]      consumer name of the worker
-- ARGV[-2 + 6i .. 3 + 6i]  the i-th delivery: ready-stream entry id; its job's origin id;
--              "=" and the result's msgpack, or "" for none; how long to keep the outcome, ms
--              (0: none, as for a delivery that ran no job); attempts made; when the job
--              started, ms
--
-- Returns how many entries were acknowledged (others were settled already).
local entries, now = {}, server_now()
for i = 1, #KEYS - 1 do
  local a = 6 * i - 2
  local record, keep = KEYS[1 + i], tonumber(ARGV[a + 3])
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
end
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(entries))
redis.call('XDEL', KEYS[1], unpack(entries))
return acked
