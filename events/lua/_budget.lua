-- Shared by the budget scripts (after _emit.lua). Period keys come in the order daily, weekly, monthly, total.
local SLOT = {daily = 1, weekly = 2, monthly = 3, total = 4}

-- Add `amount` of spend to every scope in every period, then raise each budget's soft alert once per
-- period when its spend reaches alert_pct of the limit. Returns the alerts raised, as {scope, spent, limit}.
local function spend(cfg_key, periods, scopes, amount, alerts_stream, user, now)
  for _, key in ipairs(periods) do
    for _, scope in ipairs(scopes) do
      redis.call('HINCRBY', key, 'spent:' .. scope, amount)
    end
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
