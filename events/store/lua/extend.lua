-- helpers: emit budget
-- Before a model call: make the job's hold cover `needed` (what the job has spent plus the call's worst case),
-- against every budget that applies to the job now, all or nothing. A budget made after the job was submitted
-- binds this call too: the whole hold must fit in it, as the job's whole spend will count against it.
-- KEYS: budget config, the hold, the hold's four period keys
-- ARGV: needed (micros), the hold's period ids (JSON list of 4, as the hold recorded them), period TTLs (JSON)
-- Returns {'held', amount}, {'nohold'}, {'moved'} (the period keys are not the hold's) or
-- {'rejected', scope, remaining, limit, period}.
local h = redis.call('HMGET', KEYS[2], 'amount', 'applied', 'scopes', 'period_ids')
if not h[1] then return {'nohold'} end
if h[4] ~= ARGV[2] then return {'moved'} end
local amount = tonumber(h[1])
local target = math.max(amount, tonumber(ARGV[1]))
local delta = target - amount
local periods = {KEYS[3], KEYS[4], KEYS[5], KEYS[6]}
local ttls = cjson.decode(ARGV[3])
local applied = cjson.decode(h[2])
local have = {}
for _, a in ipairs(applied) do have[a[1] .. '\0' .. a[2]] = true end
local fresh = {}
for _, scope in ipairs(cjson.decode(h[3])) do
  local raw = redis.call('HGET', KEYS[1], scope)
  if raw then
    local cfg = cjson.decode(raw)
    local slot = SLOT[cfg.period]
    local held = have[slot .. '\0' .. scope]
    local adds = held and delta or target
    if adds > 0 then
      local no = refusal(periods[slot], scope, cfg, adds)
      if no then return no end
      if not held then fresh[#fresh + 1] = {slot, scope} end
    end
  end
end
-- Every scope the hold already counts against grows with it, budget or not, so that settling stays exact.
if delta > 0 then
  for _, a in ipairs(applied) do redis.call('HINCRBY', periods[a[1]], 'held:' .. a[2], delta) end
end
for _, a in ipairs(fresh) do
  redis.call('HINCRBY', periods[a[1]], 'held:' .. a[2], target)
  keep(periods[a[1]], ttls[a[1]])
  applied[#applied + 1] = a
end
if delta > 0 or #fresh > 0 then
  redis.call('HSET', KEYS[2], 'amount', target, 'applied', cjson.encode(applied))
end
return {'held', tostring(target)}
