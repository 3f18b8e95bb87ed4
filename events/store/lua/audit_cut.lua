-- Remove a verified prefix of the audit log and move the checkpoint forward (never back: two trims may race).
-- KEYS: the audit log, the checkpoint
-- ARGV: seq and hash of the last removed record, then the removed records' entry ids
-- Returns how many records were removed.
if tonumber(ARGV[1]) > tonumber(redis.call('HGET', KEYS[2], 'seq') or '0') then
  redis.call('HSET', KEYS[2], 'seq', ARGV[1], 'hash', ARGV[2])
end
local removed = 0
for i = 3, #ARGV do removed = removed + redis.call('XDEL', KEYS[1], ARGV[i]) end
return removed
