-- helpers: emit followers
-- Cancel a job: a queued one ends now and never runs; a running one is flagged for its worker. A queued leader
-- of identical requests in flight also stops being the leader and ends the jobs that waited for it.
-- KEYS: job, job stream, lifecycle stream, queued jobs, then for a leader only: the request's in-flight leader,
--       its followers, then each follower's job and stream
-- ARGV: job id, now, job ttl, stream ttl, event data (JSON), then for a leader: cache (JSON: followers (the ids
--       read, in the order of their keys), shared outcome (status, error, provider))
-- Returns 'cancelled', 'cancelling', 'missing', 'moved' (a leader's followers are not the ones read: nothing
-- was written, read them again), or the terminal status the job already had.
local st = redis.call('HMGET', KEYS[1], 'status', 'attempt')
if not st[1] then return 'missing' end
if st[1] == 'queued' then
  local c = ARGV[6] and cjson.decode(ARGV[6]) or nil
  if c and not same_members(KEYS[6], c.followers) then return 'moved' end
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancel', '1', 'finished_at', ARGV[2],
    'error', '{"code":"cancelled","message":"The job was cancelled before it started."}')
  local seq = redis.call('XLEN', KEYS[2])
  emit(KEYS[2], 'cancelled', ARGV[1], seq, ARGV[2], st[2], ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  redis.call('ZREM', KEYS[4], ARGV[1])
  emit(KEYS[3], 'lifecycle', ARGV[1], 0, ARGV[2], st[2], '{"status":"cancelled"}')
  if c then
    if redis.call('GET', KEYS[5]) == ARGV[1] then redis.call('DEL', KEYS[5]) end
    end_followers(KEYS[6], 7, c.followers, ARGV[1], c.shared, KEYS[3], ARGV[2], ARGV[3], ARGV[4])
  end
  return 'cancelled'
end
if st[1] == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  return 'cancelling'
end
return st[1]
