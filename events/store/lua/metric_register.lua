-- Register a custom metric family (or check it matches the one registered) and one of its label sets, within
-- the bounds on families and label sets, for every API instance at once.
-- KEYS: the families hash (family -> definition), the family's label sets (set)
-- ARGV: family, definition (JSON), label set (JSON), max families, max label sets
-- Returns {'ok'}, {'conflict', registered definition}, {'too_many_metrics'} or {'too_many_series'}.
local known = redis.call('HGET', KEYS[1], ARGV[1])
if not known then
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return {'too_many_metrics'} end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
elseif known ~= ARGV[2] then
  return {'conflict', known}
end
if redis.call('SISMEMBER', KEYS[2], ARGV[3]) == 0 then
  if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[5]) then return {'too_many_series'} end
  redis.call('SADD', KEYS[2], ARGV[3])
end
return {'ok'}
