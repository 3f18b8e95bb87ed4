-- Add each lifecycle entry's status to the job counts, once per entry (its dedupe mark is set in the same step).
-- KEYS: the counts hash, then one dedupe mark per entry
-- ARGV: TTL of the dedupe marks, then one counter name per entry (in the order of the marks)
-- Returns how many entries were applied (the rest had been applied before).
local applied = 0
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('HINCRBY', KEYS[1], ARGV[i], 1)
    applied = applied + 1
  end
end
return applied
