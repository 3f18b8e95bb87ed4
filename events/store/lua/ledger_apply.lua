-- Apply a batch of usage events' counter increments exactly once: each event's dedupe mark is set in the same
-- step as its increments. Increments to the same counter are summed first, so a batch costs one HINCRBY per
-- counter.
-- KEYS: one dedupe mark per event, then every counter hash the batch touches
-- ARGV: TTL of the dedupe marks, then the batch (JSON list, one item per event in the order of the marks:
--       {ops = {{key index, field, delta}...}, ttl = {{key index, seconds}...}}, key indexes into KEYS)
-- Returns how many events were applied (the rest had been applied before).
local applied = 0
local sums, order, ttls = {}, {}, {}
for i, entry in ipairs(cjson.decode(ARGV[2])) do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    for _, op in ipairs(entry.ops) do
      local slot = op[1] .. '\0' .. op[2]
      if sums[slot] == nil then
        sums[slot] = 0
        order[#order + 1] = {op[1], op[2], slot}
      end
      sums[slot] = sums[slot] + op[3]
    end
    for _, t in ipairs(entry.ttl) do ttls[t[1]] = t[2] end
    applied = applied + 1
  end
end
for _, o in ipairs(order) do redis.call('HINCRBY', KEYS[o[1]], o[2], string.format('%d', sums[o[3]])) end
for index, seconds in pairs(ttls) do redis.call('EXPIRE', KEYS[index], seconds) end
return applied
