-- Apply a batch of usage entries to the ledger exactly once. Every entry's mark is checked first; only when none
-- was applied before are the batch's counters added (summed per counter by the caller, one HINCRBY each) and its
-- marks set, in the same step. The batch comes as JSON: measured, it costs less than thousands of ARGV items.
-- KEYS: the mark sets (one per hour the entries were added to the stream in), then the counter hashes
-- ARGV: TTL of the mark sets; JSON list, per mark set, of its entry ids; JSON list, per counter hash, of
--       [TTL in seconds (0: none), {field: amount}]
-- Returns the ids of the entries applied before (then nothing changed), or an empty list (the batch is applied).
local sets = cjson.decode(ARGV[2])
local seen = {}
for s, ids in ipairs(sets) do
  local found = redis.call('SMISMEMBER', KEYS[s], unpack(ids))
  for i = 1, #ids do
    if found[i] == 1 then seen[#seen + 1] = ids[i] end
  end
end
if #seen > 0 then return seen end
for s, ids in ipairs(sets) do
  redis.call('SADD', KEYS[s], unpack(ids))
  redis.call('EXPIRE', KEYS[s], ARGV[1])
end
for k, row in ipairs(cjson.decode(ARGV[3])) do
  local key = KEYS[#sets + k]
  for field, amount in pairs(row[2]) do
    redis.call('HINCRBY', key, field, string.format('%d', amount))  -- never '1e+20'
  end
  if row[1] > 0 then redis.call('EXPIRE', key, row[1]) end
end
return {}
