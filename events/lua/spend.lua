-- Record spend that had no hold (manual tracking), with its usage event.
-- KEYS: budget config, period keys (daily, weekly, monthly, total), alerts stream, usage stream
-- ARGV: amount, user, now, TTLs of the four period keys, number of scopes N, N scopes, then the usage fields
local periods = {KEYS[2], KEYS[3], KEYS[4], KEYS[5]}
for i = 1, 4 do
  local ttl = tonumber(ARGV[3 + i])
  if ttl > 0 and redis.call('TTL', periods[i]) < 0 then redis.call('EXPIRE', periods[i], ttl) end
end
local n = tonumber(ARGV[8])
local scopes = {}
for i = 1, n do scopes[i] = ARGV[8 + i] end
local alerts = spend(KEYS[1], periods, scopes, ARGV[1], KEYS[6], ARGV[2], ARGV[3])
redis.call('XADD', KEYS[7], '*', unpack(ARGV, 9 + n))
return alerts
