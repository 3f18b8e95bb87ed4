-- helpers: emit
-- The sweeper found a running job whose lease lapsed: run it again as the next attempt,
-- or end it when it was cancelled or has used up its attempts.
-- KEYS: job, lease, job stream, running set, lifecycle stream, queue list, queued jobs
-- ARGV: job id, expected attempt, now, task message for the next attempt, max attempts, job ttl, stream ttl,
--       the message's task id, origin and delivery tag
-- Returns 'requeued', 'alive' (the lease is back), 'gone' (not running), 'changed' (another attempt runs),
-- 'failed' (out of attempts) or 'cancelled'.
local function lifecycle(attempt, status)
  emit(KEYS[5], 'lifecycle', ARGV[1], 0, ARGV[3], attempt, cjson.encode({status = status}))
end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'alive' end
local st = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'cancel')
if st[1] ~= 'running' then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return 'gone'
end
if st[2] ~= ARGV[2] then return 'changed' end
local seq = redis.call('XLEN', KEYS[3])
local attempt = tonumber(st[2])
redis.call('ZREM', KEYS[4], ARGV[1])
local ended = nil
if st[3] == '1' then
  ended = {'cancelled', 'cancelled', 'The job was cancelled while its worker was lost.'}
elseif attempt >= tonumber(ARGV[5]) then
  ended = {'failed', 'error', 'The job lost its worker on every one of its ' .. attempt .. ' attempts.'}
end
if ended then
  local code = ended[1] == 'cancelled' and 'cancelled' or 'worker_lost'
  local err = cjson.encode({code = code, message = ended[3]})
  redis.call('HSET', KEYS[1], 'status', ended[1], 'finished_at', ARGV[3], 'error', err)
  emit(KEYS[3], ended[2], ARGV[1], seq, ARGV[3], st[2], err)
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('EXPIRE', KEYS[3], ARGV[7])
  lifecycle(st[2], ended[1])
  return ended[1]
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'attempt', attempt + 1, 'msg_id', ARGV[8], 'msg_origin', ARGV[9],
  'msg_tag', ARGV[10])
redis.call('HDEL', KEYS[1], 'lost_at')
emit(KEYS[3], 'metadata', ARGV[1], seq, ARGV[3], st[2],
  cjson.encode({event = 'attempt_lost', attempt = attempt, next_attempt = attempt + 1}))
redis.call('LPUSH', KEYS[6], ARGV[4])
redis.call('ZADD', KEYS[7], ARGV[3], ARGV[1])
lifecycle(st[2], 'retried')
return 'requeued'
