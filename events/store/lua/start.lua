-- helpers: emit
-- A worker starts attempt ARGV[2] of a queued job: take the lease, mark it running, emit `start`.
-- KEYS: job, lease, job stream, running set, lifecycle stream, queued jobs
-- ARGV: job id, attempt, now, lease token, lease ms, worker name, start data (JSON)
-- Returns {outcome, next seq, job hash}; outcome 'ok', or why the attempt must not run ('missing', 'stale',
-- 'leased', or the job's status).
local st = redis.call('HMGET', KEYS[1], 'status', 'attempt')
if not st[1] then return {'missing', 0} end
if st[1] == 'running' and redis.call('GET', KEYS[2]) == ARGV[4] then
  -- Sent again after a lost connection: this attempt started already; carry on after its `start` event.
  return {'ok', redis.call('XLEN', KEYS[3]), redis.call('HGETALL', KEYS[1])}
end
if st[1] ~= 'queued' then return {st[1], 0} end
if tonumber(st[2]) ~= tonumber(ARGV[2]) then return {'stale', 0} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'leased', 0} end
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[6])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[3])
local seq = redis.call('XLEN', KEYS[3])
emit(KEYS[3], 'start', ARGV[1], seq, ARGV[3], ARGV[2], ARGV[7])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
emit(KEYS[5], 'lifecycle', ARGV[1], 0, ARGV[3], ARGV[2], '{"status":"running"}')
return {'ok', seq + 1, redis.call('HGETALL', KEYS[1])}
