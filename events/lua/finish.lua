-- A running attempt ends: store the outcome and emit the terminal event, only while it holds the lease.
-- KEYS: job, lease, job stream, running set, lifecycle stream
-- ARGV: job_id, attempt, now, lease token, status, result, error JSON, usage JSON,
--       event type, event data JSON, seq, job ttl, stream ttl
if redis.call('GET', KEYS[2]) ~= ARGV[4] then return 'lost' end
redis.call('HSET', KEYS[1], 'status', ARGV[5], 'finished_at', ARGV[3], 'result', ARGV[6],
  'error', ARGV[7], 'usage', ARGV[8])
emit(KEYS[3], ARGV[9], ARGV[1], ARGV[11], ARGV[3], ARGV[2], ARGV[10])
redis.call('EXPIRE', KEYS[1], ARGV[12])
redis.call('EXPIRE', KEYS[3], ARGV[13])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[4], ARGV[1])
emit(KEYS[5], 'lifecycle', ARGV[1], 0, ARGV[3], ARGV[2], '{"status":"' .. ARGV[5] .. '"}')
return 'ok'
