-- Submit a job: honour the Idempotency-Key, save the job, index it, enqueue its task and write its audit
-- record, all at once (a submitted job is never missing from the audit trail).
-- KEYS: job, user's jobs, all jobs, lifecycle stream, queue list, idempotency key (unused unless ARGV[6] == '1'),
--       audit stream
-- ARGV: job_id, now, job ttl, task message, body hash, use idempotency ('1'/'0'), idempotency ttl,
--       lifecycle data JSON, audit stream max length, n = how many audit event fields follow (names and values),
--       the n audit fields, then the job's fields as name, value pairs
-- Returns {'created', job_id} or {'exists', 'job_id:body hash'}. Sent again after a lost connection, it finds its
-- job saved and answers 'created' without doing anything twice.
if redis.call('EXISTS', KEYS[1]) == 1 then return {'created', ARGV[1]} end
if ARGV[6] == '1' then
  local prev = redis.call('GET', KEYS[6])
  if prev then return {'exists', prev} end
  redis.call('SET', KEYS[6], ARGV[1] .. ':' .. ARGV[5], 'EX', ARGV[7])
end
local n = tonumber(ARGV[10])
redis.call('HSET', KEYS[1], unpack(ARGV, 11 + n))
redis.call('EXPIRE', KEYS[1], ARGV[3])
local horizon = tonumber(ARGV[2]) - tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', horizon)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', horizon)
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
emit(KEYS[4], 'lifecycle', ARGV[1], 0, ARGV[2], '1', ARGV[8])
redis.call('LPUSH', KEYS[5], ARGV[4])
if n > 0 then
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[9], '*', unpack(ARGV, 11, 10 + n))
end
return {'created', ARGV[1]}
