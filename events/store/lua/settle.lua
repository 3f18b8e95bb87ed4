-- helpers: emit budget
-- Swap a job's hold for what it actually spent, exactly once (the hold is deleted).
-- KEYS: the hold, the holds index, budget config, alerts stream, the hold's four period keys
-- ARGV: index member, now, the period ids the caller read from the hold (JSON list of 4), period TTLs (JSON)
-- Returns {'none'} (no hold), {'moved', period ids} (read them again), or {'settled', spent, amount, alerts}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {'none'}
end
local h = redis.call('HMGET', KEYS[1], 'amount', 'spent', 'applied', 'scopes', 'period_ids', 'user')
if h[5] ~= ARGV[3] then return {'moved', h[5]} end
local periods = {KEYS[5], KEYS[6], KEYS[7], KEYS[8]}
for _, a in ipairs(cjson.decode(h[3])) do redis.call('HINCRBY', periods[a[1]], 'held:' .. a[2], -tonumber(h[1])) end
local alerts = spend(KEYS[3], periods, cjson.decode(ARGV[4]), cjson.decode(h[4]), h[2], KEYS[4], h[6], ARGV[2])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return {'settled', h[2], h[1], alerts}
