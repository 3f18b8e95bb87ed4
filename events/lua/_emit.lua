-- Shared by the job scripts: append one event envelope to a stream.
local function emit(stream, etype, job_id, seq, ts, attempt, data)
  return redis.call('XADD', stream, '*', 'type', etype, 'job_id', job_id, 'seq', seq,
    'ts', ts, 'attempt', attempt, 'data', data, 'v', '1')
end
