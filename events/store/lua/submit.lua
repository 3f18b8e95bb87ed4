-- helpers: emit
-- Submit a job: honour the Idempotency-Key, answer it from the response cache or join the identical job in
-- flight, or save the job, index it and enqueue its task; write its lifecycle and audit records, all at once (a
-- submitted job is never missing from the audit trail). Sent again after a lost connection, it finds its job
-- saved and answers 'created' without doing anything twice.
-- KEYS: job, user's jobs, all jobs, lifecycle stream, queue list, idempotency key (read only when ARGV[6] is
--       '1'), audit stream, queued jobs, then (read only when the cache JSON is not ''): the user's documents
--       version, cache entries, cache expiry index, cache stats, the request's in-flight leader, its followers,
--       the job's stream
-- ARGV: job id, now, job ttl, task message, body digest, use idempotency ('1'/'0'), idempotency ttl,
--       lifecycle data (JSON), audit stream max length, audit data (JSON, '' for none), job fields (JSON object,
--       the message's ids among them), cache (JSON: digest, docs_version, may_run, inflight_ttl, max_followers,
--       stream_ttl, followers_ttl, usage, provider; '' when the request is not cached)
-- Returns {'created', job id, role, source} with role 'hit' (answered from the cache entry of job `source`),
-- 'follower' (waits for the leader job `source`), 'leader' (runs, others may join) or 'none'; {'needs_hold'}
-- when the job must run but was sent without a hold (may_run false); or {'exists', 'job id:body digest'}.
if redis.call('EXISTS', KEYS[1]) == 1 then return {'created', ARGV[1], 'none', ''} end
local now = tonumber(ARGV[2])
local c = ARGV[12] ~= '' and cjson.decode(ARGV[12]) or nil
local role, source, entry = 'none', '', nil
if c then
  if (redis.call('GET', KEYS[9]) or '0') == c.docs_version then
    local raw = redis.call('HGET', KEYS[10], c.digest)
    if raw and tonumber(redis.call('ZSCORE', KEYS[11], c.digest) or '0') > now then
      entry = cjson.decode(raw)
      role, source = 'hit', entry.source_job
    else
      local leader = redis.call('GET', KEYS[13])
      if not leader then
        role = 'leader'
      elseif redis.call('SCARD', KEYS[14]) < tonumber(c.max_followers) then
        role, source = 'follower', leader
      end  -- else the leader has all the followers it may have: this job runs on its own
    end
  end
  if role ~= 'hit' and role ~= 'follower' and not c.may_run then return {'needs_hold'} end
end
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
local horizon = now - tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', horizon)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', horizon)
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
emit(KEYS[4], 'lifecycle', ARGV[1], 0, ARGV[2], 1, ARGV[8])
if role == 'hit' then
  -- Answered now, at no model cost: the usual events, with a `metadata` event naming the job it came from.
  local done = cjson.encode({result = entry.result, usage = cjson.decode(c.usage), cached = true, source_job = source})
  redis.call('HSET', KEYS[1], 'status', 'succeeded', 'result', entry.result, 'usage', c.usage, 'cost_micros', '0',
    'hold_micros', '0', 'cached', '1', 'cache_source', source, 'started_at', ARGV[2], 'finished_at', ARGV[2])
  emit(KEYS[15], 'start', ARGV[1], 0, ARGV[2], 1,
    cjson.encode({attempt = 1, worker = '', provider = c.provider, cached = true}))
  emit(KEYS[15], 'metadata', ARGV[1], 1, ARGV[2], 1,
    cjson.encode({event = 'cache_hit', kind = 'stored', source_job = source}))
  emit(KEYS[15], 'token', ARGV[1], 2, ARGV[2], 1, cjson.encode({text = entry.result}))
  emit(KEYS[15], 'done', ARGV[1], 3, ARGV[2], 1, done)
  redis.call('EXPIRE', KEYS[15], c.stream_ttl)
  emit(KEYS[4], 'lifecycle', ARGV[1], 0, ARGV[2], 1, '{"status":"succeeded","cached":true}')
elseif role == 'follower' then
  -- No message and no worklist entry: the leader's finish.lua (or cancel.lua) ends this job with its outcome.
  redis.call('HSET', KEYS[1], 'follows', source, 'cache_source', source, 'hold_micros', '0')
  redis.call('SADD', KEYS[14], ARGV[1])
  redis.call('EXPIRE', KEYS[14], c.followers_ttl)
else
  if role == 'leader' then
    redis.call('HSET', KEYS[1], 'cache_digest', c.digest)
    redis.call('SET', KEYS[13], ARGV[1], 'EX', c.inflight_ttl)
  end
  redis.call('LPUSH', KEYS[5], ARGV[4])
  redis.call('ZADD', KEYS[8], ARGV[2], ARGV[1])
end
if ARGV[10] ~= '' then emit(KEYS[7], 'audit', '', 0, ARGV[2], 0, ARGV[10], ARGV[9]) end
return {'created', ARGV[1], role, source}
