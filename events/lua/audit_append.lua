-- Append one record to the audit chain if the head is still what the caller read (compare and set),
-- and only once per source entry.
-- KEYS: audit log stream, head hash, sources set
-- ARGV: expected head seq, source entry id, seq, prev hash, hash, record JSON
-- Returns 'ok', 'seen' (appended before) or 'moved' (the head changed: re-read and retry).
if redis.call('SISMEMBER', KEYS[3], ARGV[2]) == 1 then return 'seen' end
local seq = redis.call('HGET', KEYS[2], 'seq') or '0'
if seq ~= ARGV[1] then return 'moved' end
redis.call('XADD', KEYS[1], '*', 'seq', ARGV[3], 'prev', ARGV[4], 'hash', ARGV[5], 'source', ARGV[2],
  'record', ARGV[6])
redis.call('HSET', KEYS[2], 'seq', ARGV[3], 'hash', ARGV[5])
redis.call('SADD', KEYS[3], ARGV[2])
return 'ok'
