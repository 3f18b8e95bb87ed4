-- Submit a job: honour the Idempotency-Key, save the job, index it, and enqueue its task, all at once.
-- KEYS: job, user's jobs, all jobs, lifecycle stream, queue list, idempotency key (unused unless ARGV[6] == '1')
-- ARGV: job_id, now, job ttl, task message, body hash, use idempotency ('1'/'0'), idempotency ttl,
--       lifecycle data JSON, then the job's fields as name, value pairs
-- Returns {'created', job_id} or {'exists', 'job_id:body hash'}.
if ARGV[6] == '1' then
  local prev = redis.call('GET', KEYS[6])
  if prev then return {'exists', prev} end
  redis.call('SET', KEYS[6], ARGV[1] .. ':' .. ARGV[5], 'EX', ARGV[7])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('EXPIRE', KEYS[1], ARGV[3])
local horizon = tonumber(ARGV[2]) - tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', horizon)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', horizon)
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
emit(KEYS[4], 'lifecycle', ARGV[1], 0, ARGV[2], '1', ARGV[8])
redis.call('LPUSH', KEYS[5], ARGV[4])
return {'created', ARGV[1]}
