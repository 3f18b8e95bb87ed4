-- Shared by the budget scripts (after _emit.lua). A job's hold counts against four period keys, given in KEYS
-- in the order daily, weekly, monthly, total; `applied` lists the (slot, scope) pairs it is held against.
local SLOT = {daily = 1, weekly = 2, monthly = 3, total = 4}

-- A period key made by HINCRBY has no TTL yet: give it its own (0: kept for ever).
local function keep(key, ttl)
  if ttl > 0 and redis.call('TTL', key) == -1 then redis.call('EXPIRE', key, ttl) end
end

-- Whether `amount` more fits the scope's budget in its period: nil when it does, else the rejection with what
-- the period has spent and what running jobs hold in it (their holds come back when they end).
local function refusal(key, scope, cfg, amount)
  local spent = tonumber(redis.call('HGET', key, 'spent:' .. scope) or '0')
  local held = tonumber(redis.call('HGET', key, 'held:' .. scope) or '0')
  local remaining = cfg.limit_micros - spent - held
  if amount > remaining then
    return {'rejected', scope, tostring(remaining), tostring(cfg.limit_micros), cfg.period, tostring(spent),
      tostring(held)}
  end
  return nil
end

-- Add `amount` of spend to every scope in every period, then raise each budget's soft alert once per
-- period when its spend reaches alert_pct of the limit. Returns the alerts raised, as {scope, spent, limit}.
local function spend(cfg_key, periods, ttls, scopes, amount, alerts_stream, user, now)
  for i, key in ipairs(periods) do
    for _, scope in ipairs(scopes) do
      redis.call('HINCRBY', key, 'spent:' .. scope, amount)
    end
    keep(key, ttls[i])
  end
  local alerts = {}
  for _, scope in ipairs(scopes) do
    local raw = redis.call('HGET', cfg_key, scope)
    if raw then
      local cfg = cjson.decode(raw)
      local key = periods[SLOT[cfg.period]]
      local spent = tonumber(redis.call('HGET', key, 'spent:' .. scope) or '0')
      if cfg.limit_micros > 0 and spent * 100 >= cfg.limit_micros * cfg.alert_pct
          and redis.call('HSETNX', key, 'alerted:' .. scope, '1') == 1 then
        emit(alerts_stream, 'budget_alert', '', 0, now, 0, cjson.encode({user_id = user, scope = scope,
          period = cfg.period, spent_micros = spent, limit_micros = cfg.limit_micros, alert_pct = cfg.alert_pct}),
          '100000')
        alerts[#alerts + 1] = {scope, tostring(spent), tostring(cfg.limit_micros)}
      end
    end
  end
  return alerts
end
