-- helpers: emit
-- The sweeper asks whether a job queued for long still has its Celery message: in kombu's `unacked` hash (a
-- worker took it and has not acknowledged it yet) or in the queue list, searched from the tail (kombu LPUSHes and
-- BRPOPs, so the oldest messages wait there), as it was pushed or as kombu restores it. A message found nowhere on
-- two looks at least `confirm` seconds apart was lost on its way to a worker: a new message for the same attempt
-- goes to the front of the queue (the job has waited its turn). A second message is harmless: start.lua runs an
-- attempt once, and refuses the other message.
-- KEYS: job, queued jobs, queue list, unacked hash, lifecycle stream
-- ARGV: job id, now, attempt, the message's delivery tag, its text, its text as kombu restores it, how many list
--       entries to search at most, confirm seconds, a new message ('' to only look), its task id, origin and
--       delivery tag
-- Returns 'gone' (no longer queued), 'changed' (another message or attempt meanwhile), 'delivered' (in
-- `unacked`), 'waiting' (in the list), 'unknown' (the list is longer than the search), 'missing' (found
-- nowhere: looked once, or too soon to be sure) or 'reenqueued'.
local st = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'msg_tag', 'lost_at')
if st[1] ~= 'queued' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'gone'
end
if st[2] ~= ARGV[3] or st[3] ~= ARGV[4] then return 'changed' end
local function seen(outcome, later)
  if st[4] then redis.call('HDEL', KEYS[1], 'lost_at') end
  -- Looked again only after another bound: nothing here says where the queue's front is.
  if later then redis.call('ZADD', KEYS[2], 'XX', ARGV[2], ARGV[1]) end
  return outcome
end
if redis.call('HEXISTS', KEYS[4], ARGV[4]) == 1 then return seen('delivered', true) end
local depth = tonumber(ARGV[7])
if redis.call('LPOS', KEYS[3], ARGV[5], 'RANK', -1, 'MAXLEN', depth)
    or redis.call('LPOS', KEYS[3], ARGV[6], 'RANK', -1, 'MAXLEN', depth) then
  return seen('waiting', false)
end
if redis.call('LLEN', KEYS[3]) > depth then return seen('unknown', true) end
if not st[4] then
  redis.call('HSET', KEYS[1], 'lost_at', ARGV[2])
  return 'missing'
end
if ARGV[9] == '' or tonumber(ARGV[2]) - tonumber(st[4]) < tonumber(ARGV[8]) then return 'missing' end
redis.call('RPUSH', KEYS[3], ARGV[9])
redis.call('HSET', KEYS[1], 'msg_id', ARGV[10], 'msg_origin', ARGV[11], 'msg_tag', ARGV[12])
redis.call('HDEL', KEYS[1], 'lost_at')
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
emit(KEYS[5], 'lifecycle', ARGV[1], 0, ARGV[2], ARGV[3], '{"status":"reenqueued","reason":"message_lost"}')
return 'reenqueued'
