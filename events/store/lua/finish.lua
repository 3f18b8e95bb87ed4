-- helpers: emit followers
-- A running attempt ends: store the outcome and emit the terminal event, only while it holds the lease. A leader
-- of the response cache also stores its answer as a cache entry (on success; the oldest entries are evicted past
-- the bounds), stops being the request's leader, and ends the jobs that waited for it with its outcome.
-- KEYS: job, lease, job stream, running set, lifecycle stream, then for a leader only: cache entries, cache
--       expiry index, cache stats, the request's in-flight leader, its followers, then each follower's job and
--       stream
-- ARGV: job id, attempt, now, lease token, job ttl, stream ttl, outcome (JSON: status, result, error, usage,
--       event, data, seq), then for a leader: cache (JSON: digest, entry (JSON text, '' for none), ttl,
--       max_entries, max_bytes, followers (the ids read, in the order of their keys), shared outcome (status,
--       result, usage, error, provider))
-- Returns 'ok'; 'lost' when another attempt holds the lease; for a leader {'ok', stored (1/0), evicted,
-- expired, cache bytes, followers ended} or 'moved' (the followers are not the ones read: read them again).
-- Nothing is written unless the reply is 'ok'.
if redis.call('GET', KEYS[2]) ~= ARGV[4] then return 'lost' end
local c = ARGV[8] and cjson.decode(ARGV[8]) or nil
if c and not same_members(KEYS[10], c.followers) then return 'moved' end
local o = cjson.decode(ARGV[7])
redis.call('HSET', KEYS[1], 'status', o.status, 'finished_at', ARGV[3], 'result', o.result, 'error', o.error,
  'usage', o.usage)
emit(KEYS[3], o.event, ARGV[1], o.seq, ARGV[3], ARGV[2], o.data)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[6])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[4], ARGV[1])
emit(KEYS[5], 'lifecycle', ARGV[1], 0, ARGV[3], ARGV[2], cjson.encode({status = o.status}))
if not c then return 'ok' end
local now = tonumber(ARGV[3])
local function drop(digest)
  local raw = redis.call('HGET', KEYS[6], digest)
  if raw then
    redis.call('HDEL', KEYS[6], digest)
    redis.call('HINCRBY', KEYS[8], 'bytes', -#raw)
  end
  redis.call('ZREM', KEYS[7], digest)
end
local stored, evicted, expired = 0, 0, 0
if c.entry ~= '' and #c.entry <= tonumber(c.max_bytes) then
  drop(c.digest)
  redis.call('HSET', KEYS[6], c.digest, c.entry)
  redis.call('HINCRBY', KEYS[8], 'bytes', #c.entry)
  redis.call('ZADD', KEYS[7], now + tonumber(c.ttl), c.digest)
  stored = 1
  for _, digest in ipairs(redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now)) do
    drop(digest)
    expired = expired + 1
  end
  -- Entries share one TTL, so the earliest to expire is the oldest.
  while redis.call('ZCARD', KEYS[7]) > tonumber(c.max_entries)
      or tonumber(redis.call('HGET', KEYS[8], 'bytes') or '0') > tonumber(c.max_bytes) do
    local oldest = redis.call('ZRANGE', KEYS[7], 0, 0)
    if #oldest == 0 then break end
    drop(oldest[1])
    evicted = evicted + 1
  end
end
if redis.call('GET', KEYS[9]) == ARGV[1] then redis.call('DEL', KEYS[9]) end
local ended = end_followers(KEYS[10], 11, c.followers, ARGV[1], c.shared, KEYS[5], ARGV[3], ARGV[5], ARGV[6])
return {'ok', stored, evicted, expired, tonumber(redis.call('HGET', KEYS[8], 'bytes') or '0'), ended}
