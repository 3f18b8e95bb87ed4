-- Before a model call: make the job's hold cover `needed` (what the job has spent plus the call's worst case),
-- against every budget that applies to the job now, all or nothing. A budget made after the job was submitted
-- binds this call too: the whole hold must fit in it, as the job's whole spend will count against it.
-- KEYS: budget config, the hold, then the period keys of the hold (daily, weekly, monthly, total)
-- ARGV: needed (micros), then the job's scopes ('user', 'session:…', 'agent:…')
-- Returns {'held', amount}, {'nohold'}, or {'rejected', scope, remaining, limit, period}.
local h = redis.call('HMGET', KEYS[2], 'amount', 'applied')
if not h[1] then return {'nohold'} end
local amount = tonumber(h[1])
local target = math.max(amount, tonumber(ARGV[1]))
local delta = target - amount
local periods = {KEYS[3], KEYS[4], KEYS[5], KEYS[6]}
local applied = cjson.decode(h[2])
local have = {}
for _, a in ipairs(applied) do have[a[1] .. '\0' .. a[2]] = true end
local fresh = {}
for i = 2, #ARGV do
  local scope = ARGV[i]
  local raw = redis.call('HGET', KEYS[1], scope)
  if raw then
    local cfg = cjson.decode(raw)
    local key = periods[SLOT[cfg.period]]
    local adds = delta
    if not have[key .. '\0' .. scope] then adds = target end
    if adds > 0 then
      local spent = tonumber(redis.call('HGET', key, 'spent:' .. scope) or '0')
      local held = tonumber(redis.call('HGET', key, 'held:' .. scope) or '0')
      local remaining = cfg.limit_micros - spent - held
      if adds > remaining then
        return {'rejected', scope, tostring(remaining), tostring(cfg.limit_micros), cfg.period}
      end
      if not have[key .. '\0' .. scope] then fresh[#fresh + 1] = {key, scope} end
    end
  end
end
-- Every scope the hold already counts against grows with it, budget or not, so that settling stays exact.
if delta > 0 then
  for _, a in ipairs(applied) do redis.call('HINCRBY', a[1], 'held:' .. a[2], delta) end
end
for _, a in ipairs(fresh) do
  redis.call('HINCRBY', a[1], 'held:' .. a[2], target)
  applied[#applied + 1] = a
end
if delta > 0 or #fresh > 0 then
  redis.call('HSET', KEYS[2], 'amount', target, 'applied', cjson.encode(applied))
end
return {'held', tostring(target)}
