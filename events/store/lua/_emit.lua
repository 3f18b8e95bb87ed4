-- Shared by the scripts that write events: append one event envelope to a stream (capped at about `maxlen`
-- entries when it is given).
local function emit(stream, etype, job_id, seq, ts, attempt, data, maxlen)
  if maxlen then
    return redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'type', etype, 'job_id', job_id, 'seq', seq,
      'ts', ts, 'attempt', attempt, 'data', data, 'v', '1')
  end
  return redis.call('XADD', stream, '*', 'type', etype, 'job_id', job_id, 'seq', seq,
    'ts', ts, 'attempt', attempt, 'data', data, 'v', '1')
end
