#!lua flags=allow-oom
-- ack.lua: settle finished deliveries: acknowledge them in the group and drop their entries
-- from the ready stream, in one step (what a MULTI of XACK and XDEL did, in one call).
--
-- KEYS[1]   ready stream
-- ARGV[1]   consumer group name
-- ARGV[2..] ready-stream entry ids
--
-- Returns how many entries were acknowledged (others were settled already).
local entries = {}
for i = 2, #ARGV do entries[#entries + 1] = ARGV[i] end
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(entries))
redis.call('XDEL', KEYS[1], unpack(entries))
return acked
