-- Apply each entry's counter increments exactly once, marking the entry as seen in the same step.
-- ARGV[1]: TTL of the dedupe marks; ARGV[2]: JSON list of {d = dedupe key, ops = {{key, field, delta}...},
--          ttl = {{key, seconds}...}}
-- Increments to the same key and field are summed first, so a batch costs one HINCRBY per counter.
-- Returns how many entries were applied (the rest had been applied before).
local applied = 0
local sums, order, ttls = {}, {}, {}
for _, entry in ipairs(cjson.decode(ARGV[2])) do
  if redis.call('SET', entry.d, '1', 'NX', 'EX', ARGV[1]) then
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
for _, o in ipairs(order) do redis.call('HINCRBY', o[1], o[2], string.format('%d', sums[o[3]])) end
for key, seconds in pairs(ttls) do redis.call('EXPIRE', key, seconds) end
return applied
