-- Apply each entry's counter increments exactly once, marking the entry as seen in the same step.
-- ARGV[1]: TTL of the dedupe marks; ARGV[2]: JSON list of {d = dedupe key, ops = {{key, field, delta}...},
--          ttl = {{key, seconds}...}}
-- Returns how many entries were applied (the rest had been applied before).
local applied = 0
for _, entry in ipairs(cjson.decode(ARGV[2])) do
  if redis.call('SET', entry.d, '1', 'NX', 'EX', ARGV[1]) then
    for _, op in ipairs(entry.ops) do redis.call('HINCRBY', op[1], op[2], op[3]) end
    for _, t in ipairs(entry.ttl) do redis.call('EXPIRE', t[1], t[2]) end
    applied = applied + 1
  end
end
return applied
