-- Append records to the audit chain if the head is still what the caller read (compare and set) and none of
-- the source entries was appended before. The caller computed each hash from the head it read, so on any
-- change it must re-read and retry: two consumers never fork the chain, a redelivery is never appended twice.
-- KEYS: audit log stream, head hash, seen sources (sorted set: source entry id -> its time in ms, for pruning)
-- ARGV: expected head seq ('0' when there is no head), expected head hash ('' when none),
--       then per record: source entry id, seq, prev hash, hash, record JSON
-- Returns how many records were appended, or 'moved' (re-read the head and retry).
local head = redis.call('HMGET', KEYS[2], 'seq', 'hash')
if (head[1] or '0') ~= ARGV[1] or (head[2] or '') ~= ARGV[2] then return 'moved' end
for i = 3, #ARGV, 5 do
  if redis.call('ZSCORE', KEYS[3], ARGV[i]) then return 'moved' end
end
local appended = 0
for i = 3, #ARGV, 5 do
  redis.call('XADD', KEYS[1], '*', 'seq', ARGV[i + 1], 'prev', ARGV[i + 2], 'hash', ARGV[i + 3],
    'source', ARGV[i], 'record', ARGV[i + 4])
  redis.call('ZADD', KEYS[3], tonumber(string.match(ARGV[i], '^%d+')) or 0, ARGV[i])
  redis.call('HSET', KEYS[2], 'seq', ARGV[i + 1], 'hash', ARGV[i + 3])
  appended = appended + 1
end
return appended
