#!lua flags=no-writes
-- tick_in_flight.lua: whether a periodic tick that left the due index is fired and not settled
-- yet (its job is in the ready stream, read or not), so that nobody arms the tick after it
-- while it is on its way: when catching up (catch_up="all"), that next tick is due at once,
-- and the run in flight arms it itself when it ends.
--
-- KEYS[1]  ready stream
-- ARGV[1]  first entry id to look at (the tick cannot have fired before it)
-- ARGV[2]  the tick's timer id
-- ARGV[3]  at most this many entries to look at
--
-- Returns 1 when its entry is in the stream, 0 when it is not, -1 when more entries than
-- ARGV[3] follow ARGV[1] (undecided). Entries are read a page at a time, so that a stream of
-- big payloads never sits in the script's memory at once.
local PAGE = 20
local start, id, budget = ARGV[1], ARGV[2], tonumber(ARGV[3])
while budget > 0 do
  local entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', PAGE)
  for _, entry in ipairs(entries) do
    local fields = entry[2]
    for j = 1, #fields, 2 do
      if fields[j] == 'i' then
        if fields[j + 1] == id then return 1 end
        break
      end
    end
  end
  if #entries < PAGE then return 0 end
  budget = budget - #entries
  start = '(' .. entries[#entries][1]
end
return -1
