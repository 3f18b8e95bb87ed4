-- Record what one model call cost: on the job's hold, on the job, and as a usage event, at once, and only once
-- per charge id (a command sent again after a lost connection must not charge twice).
-- KEYS: the hold, the job, the usage stream
-- ARGV: cost (micros), charge id (attempt:n), then the usage event's fields as name, value pairs
-- Returns the hold's spend so far (-1 when the job has no hold).
if redis.call('HSETNX', KEYS[2], 'charged:' .. ARGV[2], ARGV[1]) == 1 then
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[1], 'spent', ARGV[1]) end
  redis.call('HINCRBY', KEYS[2], 'cost_micros', ARGV[1])
  redis.call('XADD', KEYS[3], '*', unpack(ARGV, 3))
end
return tonumber(redis.call('HGET', KEYS[1], 'spent') or '-1')
