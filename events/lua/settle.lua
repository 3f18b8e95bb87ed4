-- Swap a job's hold for what it actually spent, exactly once (the hold is deleted).
-- KEYS: the hold, the holds index, budget config, alerts stream
-- ARGV: index member, now
-- Returns {'none'} or {'settled', spent, amount, alerts...}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {'none'}
end
local h = redis.call('HMGET', KEYS[1], 'amount', 'spent', 'applied', 'scopes', 'periods', 'user')
for _, a in ipairs(cjson.decode(h[3])) do redis.call('HINCRBY', a[1], 'held:' .. a[2], -tonumber(h[1])) end
local alerts = spend(KEYS[3], cjson.decode(h[5]), cjson.decode(h[4]), h[2], KEYS[4], h[6], ARGV[2])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return {'settled', h[2], h[1], alerts}
