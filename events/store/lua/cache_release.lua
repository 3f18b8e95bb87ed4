-- helpers: emit followers
-- A leader of identical requests ended without finish.lua (the sweeper gave up on it after its worker was lost):
-- stop it being the request's leader and end the jobs that waited for it with its failure.
-- KEYS: the leader's job, the request's in-flight leader, its followers, lifecycle stream, then each follower's
--       job and stream
-- ARGV: leader id, now, job ttl, stream ttl, cache (JSON: followers (the ids read, in the order of their keys),
--       shared outcome (status, error, provider))
-- Returns the number of followers ended, 'running' (the leader has not ended: nothing to do) or 'moved' (the
-- followers are not the ones read: nothing was written, read them again).
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' or status == 'running' then return 'running' end
local c = cjson.decode(ARGV[5])
if not same_members(KEYS[3], c.followers) then return 'moved' end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return end_followers(KEYS[3], 5, c.followers, ARGV[1], c.shared, KEYS[4], ARGV[2], ARGV[3], ARGV[4])
