-- helpers: emit budget
-- Reserve a job's first worst case against every budget scope that applies, all or nothing.
-- KEYS: budget config, the four period keys, the hold, the holds index
-- ARGV: amount (micros), expires at, index member, job id, user, period TTLs (JSON list of 4),
--       period ids (JSON list of 4), scopes (JSON list: 'user', 'session:…', 'agent:…')
-- Returns {'held'}, {'exists'}, or {'rejected', scope, remaining, limit, period}.
if redis.call('EXISTS', KEYS[6]) == 1 then return {'exists'} end
local amount = tonumber(ARGV[1])
local periods = {KEYS[2], KEYS[3], KEYS[4], KEYS[5]}
local ttls = cjson.decode(ARGV[6])
local applied = {}
for _, scope in ipairs(cjson.decode(ARGV[8])) do
  local raw = redis.call('HGET', KEYS[1], scope)
  if raw then
    local cfg = cjson.decode(raw)
    local slot = SLOT[cfg.period]
    local no = refusal(periods[slot], scope, cfg, amount)
    if no then return no end
    applied[#applied + 1] = {slot, scope}
  end
end
for _, a in ipairs(applied) do
  redis.call('HINCRBY', periods[a[1]], 'held:' .. a[2], amount)
  keep(periods[a[1]], ttls[a[1]])
end
redis.call('HSET', KEYS[6], 'amount', amount, 'spent', '0', 'job_id', ARGV[4], 'user', ARGV[5],
  'applied', cjson.encode(applied), 'scopes', ARGV[8], 'period_ids', ARGV[7])
redis.call('ZADD', KEYS[7], ARGV[2], ARGV[3])
return {'held'}
