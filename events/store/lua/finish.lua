-- helpers: emit
-- A running attempt ends: store the outcome and emit the terminal event, only while it holds the lease.
-- KEYS: job, lease, job stream, running set, lifecycle stream
-- ARGV: job id, attempt, now, lease token, job ttl, stream ttl, outcome (JSON: status, result, error, usage,
--       event, data, seq)
-- Returns 'ok', or 'lost' when another attempt holds the lease (nothing is written).
if redis.call('GET', KEYS[2]) ~= ARGV[4] then return 'lost' end
local o = cjson.decode(ARGV[7])
redis.call('HSET', KEYS[1], 'status', o.status, 'finished_at', ARGV[3], 'result', o.result, 'error', o.error,
  'usage', o.usage)
emit(KEYS[3], o.event, ARGV[1], o.seq, ARGV[3], ARGV[2], o.data)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[6])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[4], ARGV[1])
emit(KEYS[5], 'lifecycle', ARGV[1], 0, ARGV[3], ARGV[2], cjson.encode({status = o.status}))
return 'ok'
