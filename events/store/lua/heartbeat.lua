-- A running attempt renews its lease and learns whether it was cancelled.
-- KEYS: lease, job
-- ARGV: lease token, lease ms
-- Returns {1 if the lease is still ours else 0, cancel flag}.
local cancel = redis.call('HGET', KEYS[2], 'cancel') or '0'
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, cancel}
end
return {0, cancel}
