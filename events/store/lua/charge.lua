-- helpers: emit
-- Record what one model call cost: on the job's hold, on the job, and as a usage event, at once, and only once
-- per charge id (a command sent again after a lost connection must not charge twice).
-- KEYS: the hold, the job, the usage stream
-- ARGV: cost (micros), charge id (attempt:n), job id, now, attempt, the usage event's data (JSON)
-- Returns the hold's spend so far (-1 when the job has no hold).
if redis.call('HSETNX', KEYS[2], 'charged:' .. ARGV[2], ARGV[1]) == 1 then
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[1], 'spent', ARGV[1]) end
  redis.call('HINCRBY', KEYS[2], 'cost_micros', ARGV[1])
  emit(KEYS[3], 'usage', ARGV[3], 0, ARGV[4], ARGV[5], ARGV[6])
end
return tonumber(redis.call('HGET', KEYS[1], 'spent') or '-1')
