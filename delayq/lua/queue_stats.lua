#!lua flags=no-writes
-- queue_stats.lua: how the ready streams of one shard stand, for `delayq queues`.
--
-- KEYS[i]   a ready stream
-- ARGV[1]   consumer group
--
-- Returns, for each stream, {entries, in flight, fired ms of the oldest waiting job or -1}:
-- entries are the jobs fired and not yet settled (acknowledged entries leave the stream);
-- in flight those delivered to a worker and not settled; waiting the rest, which come after
-- the group's last delivered entry.
local out = {}
for i = 1, #KEYS do
  local length, pending, oldest = 0, 0, -1
  if redis.call('EXISTS', KEYS[i]) == 1 then
    length = redis.call('XLEN', KEYS[i])
    local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[i])
    local last = '0-0'
    if ok then
      for _, g in ipairs(groups) do
        local info = {}
        for j = 1, #g, 2 do info[g[j]] = g[j + 1] end
        if info['name'] == ARGV[1] then
          pending, last = info['pending'], info['last-delivered-id']
        end
      end
    end
    local next_entry = redis.call('XRANGE', KEYS[i], '(' .. last, '+', 'COUNT', 1)
    if next_entry[1] then oldest = tonumber(string.match(next_entry[1][1], '^(%d+)')) end
  end
  out[i] = {length, pending, oldest}
end
return out
