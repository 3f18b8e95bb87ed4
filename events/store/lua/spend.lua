-- helpers: emit budget
-- Record spend that had no hold (usage tracked by hand), with its usage event.
-- KEYS: budget config, the four period keys, alerts stream, usage stream
-- ARGV: amount (micros), user, now, period TTLs (JSON list of 4), scopes (JSON list), usage data (JSON)
-- Returns the alerts raised, as {scope, spent, limit}.
local periods = {KEYS[2], KEYS[3], KEYS[4], KEYS[5]}
local alerts = spend(KEYS[1], periods, cjson.decode(ARGV[4]), cjson.decode(ARGV[5]), ARGV[1], KEYS[6], ARGV[2],
  ARGV[3])
emit(KEYS[7], 'usage', '', 0, ARGV[3], 0, ARGV[6])
return alerts
