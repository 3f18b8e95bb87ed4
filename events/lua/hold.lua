-- Reserve a job's worst-case cost against every budget scope that applies, all or nothing.
-- KEYS: budget config, period keys (daily, weekly, monthly, total), the hold, the holds index
-- ARGV: amount (micros), expires at, index member, job id, user, TTLs of the four period keys (0: none),
--       then the scopes to check ('user', 'session:…', 'agent:…')
-- Returns {'held'}, {'exists'}, or {'rejected', scope, remaining, limit, period}.
if redis.call('EXISTS', KEYS[6]) == 1 then return {'exists'} end
local amount = tonumber(ARGV[1])
local periods = {KEYS[2], KEYS[3], KEYS[4], KEYS[5]}
local scopes, applied = {}, {}
for i = 10, #ARGV do
  local scope = ARGV[i]
  scopes[#scopes + 1] = scope
  local raw = redis.call('HGET', KEYS[1], scope)
  if raw then
    local cfg = cjson.decode(raw)
    local key = periods[SLOT[cfg.period]]
    local spent = tonumber(redis.call('HGET', key, 'spent:' .. scope) or '0')
    local held = tonumber(redis.call('HGET', key, 'held:' .. scope) or '0')
    local remaining = cfg.limit_micros - spent - held
    if amount > remaining then
      return {'rejected', scope, tostring(remaining), tostring(cfg.limit_micros), cfg.period}
    end
    applied[#applied + 1] = {key, scope}
  end
end
for _, a in ipairs(applied) do redis.call('HINCRBY', a[1], 'held:' .. a[2], ARGV[1]) end
for i = 1, 4 do
  local ttl = tonumber(ARGV[5 + i])
  if ttl > 0 and redis.call('TTL', periods[i]) < 0 then redis.call('EXPIRE', periods[i], ttl) end
end
redis.call('HSET', KEYS[6], 'amount', ARGV[1], 'spent', '0', 'job_id', ARGV[4], 'user', ARGV[5],
  'applied', cjson.encode(applied), 'scopes', cjson.encode(scopes), 'periods', cjson.encode(periods))
redis.call('ZADD', KEYS[7], ARGV[2], ARGV[3])
return {'held'}
