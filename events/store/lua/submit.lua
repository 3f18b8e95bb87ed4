-- helpers: emit
-- Submit a job: honour the Idempotency-Key, save the job, index it, enqueue its task and write its audit
-- record, all at once (a submitted job is never missing from the audit trail). Sent again after a lost
-- connection, it finds its job saved and answers 'created' without doing anything twice.
-- KEYS: job, user's jobs, all jobs, lifecycle stream, queue list, idempotency key (read only when ARGV[6] is
--       '1'), audit stream, queued jobs
-- ARGV: job id, now, job ttl, task message, body digest, use idempotency ('1'/'0'), idempotency ttl,
--       lifecycle data (JSON), audit stream max length, audit data (JSON, '' for none), job fields (JSON object,
--       the message's ids among them)
-- Returns {'created', job id} or {'exists', 'job id:body digest'}.
if redis.call('EXISTS', KEYS[1]) == 1 then return {'created', ARGV[1]} end
if ARGV[6] == '1' then
  local prev = redis.call('GET', KEYS[6])
  if prev then return {'exists', prev} end
  redis.call('SET', KEYS[6], ARGV[1] .. ':' .. ARGV[5], 'EX', ARGV[7])
end
local fields = {}
for name, value in pairs(cjson.decode(ARGV[11])) do
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[3])
local horizon = tonumber(ARGV[2]) - tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', horizon)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', horizon)
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
emit(KEYS[4], 'lifecycle', ARGV[1], 0, ARGV[2], 1, ARGV[8])
redis.call('LPUSH', KEYS[5], ARGV[4])
redis.call('ZADD', KEYS[8], ARGV[2], ARGV[1])
if ARGV[10] ~= '' then emit(KEYS[7], 'audit', '', 0, ARGV[2], 0, ARGV[10], ARGV[9]) end
return {'created', ARGV[1]}
