-- Shared by the scripts that write events: append one event envelope to a stream (capped at about `maxlen`
-- entries when it is given). A job stream's append is also announced on the channel named like the stream, so the
-- SSE relays watching it read it now (api/relay_notices.py); the notice carries nothing, the stream holds the event.
local function emit(stream, etype, job_id, seq, ts, attempt, data, maxlen)
  local id
  if maxlen then
    id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'type', etype, 'job_id', job_id, 'seq', seq,
      'ts', ts, 'attempt', attempt, 'data', data, 'v', '1')
  else
    id = redis.call('XADD', stream, '*', 'type', etype, 'job_id', job_id, 'seq', seq,
      'ts', ts, 'attempt', attempt, 'data', data, 'v', '1')
  end
  if string.sub(stream, 1, 11) == 'stream:job:' then redis.call('PUBLISH', stream, '') end
  return id
end
