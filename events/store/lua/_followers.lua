-- Shared by finish.lua and cancel.lua (after _emit.lua): end the jobs that waited for a leader (identical
-- requests in flight share its run) with the leader's outcome.

-- Whether the set holds exactly `ids` (the followers the caller read, whose keys it passed in KEYS).
local function same_members(set_key, ids)
  local members = redis.call('SMEMBERS', set_key)
  if #members ~= #ids then return false end
  local named = {}
  for _, id in ipairs(ids) do named[id] = true end
  for _, m in ipairs(members) do
    if not named[m] then return false end
  end
  return true
end

-- End each follower still waiting for `leader`: its job and stream are KEYS[first + 2i - 2], KEYS[first + 2i - 1].
-- `o` is the shared outcome: status, result, usage (JSON), error (JSON, for a leader that did not succeed) and
-- provider. Followers never ran and spent nothing. A follower of another leader (this one's marker lapsed and a
-- new leader took the request) stays in the set. Returns how many followers ended.
local function end_followers(set_key, first, ids, leader, o, lifecycle, now, job_ttl, stream_ttl)
  local ended = 0
  for i, id in ipairs(ids) do
    local job, stream = KEYS[first + 2 * i - 2], KEYS[first + 2 * i - 1]
    local st = redis.call('HMGET', job, 'status', 'follows')
    if st[1] ~= 'queued' or st[2] == leader then redis.call('SREM', set_key, id) end
    if st[1] == 'queued' and st[2] == leader then
      local seq = redis.call('XLEN', stream)
      emit(stream, 'start', id, seq, now, 1, cjson.encode({attempt = 1, worker = '', provider = o.provider,
        cached = true}))
      emit(stream, 'metadata', id, seq + 1, now, 1, cjson.encode({event = 'cache_hit', kind = 'in_flight',
        source_job = leader}))
      local status = 'succeeded'
      if o.status == 'succeeded' then
        emit(stream, 'token', id, seq + 2, now, 1, cjson.encode({text = o.result}))
        emit(stream, 'done', id, seq + 3, now, 1, cjson.encode({result = o.result, usage = cjson.decode(o.usage),
          cached = true, source_job = leader}))
        redis.call('HSET', job, 'status', status, 'result', o.result, 'usage', o.usage, 'cost_micros', '0',
          'cached', '1', 'started_at', now, 'finished_at', now)
      else
        status = 'failed'
        emit(stream, 'error', id, seq + 2, now, 1, o.error)
        redis.call('HSET', job, 'status', status, 'error', o.error, 'started_at', now, 'finished_at', now)
      end
      redis.call('EXPIRE', job, job_ttl)
      redis.call('EXPIRE', stream, stream_ttl)
      emit(lifecycle, 'lifecycle', id, 0, now, 1, cjson.encode({status = status, cached = true}))
      ended = ended + 1
    end
  end
  return ended
end
