-- helpers: emit
-- Cancel a job: a queued one ends now and never runs; a running one is flagged for its worker.
-- KEYS: job, job stream, lifecycle stream, queued jobs
-- ARGV: job id, now, job ttl, stream ttl, event data (JSON)
-- Returns 'cancelled', 'cancelling', 'missing', or the terminal status the job already had.
local st = redis.call('HMGET', KEYS[1], 'status', 'attempt')
if not st[1] then return 'missing' end
if st[1] == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancel', '1', 'finished_at', ARGV[2],
    'error', '{"code":"cancelled","message":"The job was cancelled before it started."}')
  local seq = redis.call('XLEN', KEYS[2])
  emit(KEYS[2], 'cancelled', ARGV[1], seq, ARGV[2], st[2], ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  redis.call('ZREM', KEYS[4], ARGV[1])
  emit(KEYS[3], 'lifecycle', ARGV[1], 0, ARGV[2], st[2], '{"status":"cancelled"}')
  return 'cancelled'
end
if st[1] == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  return 'cancelling'
end
return st[1]
