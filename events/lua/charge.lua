-- Record what one model call cost: on the job's hold, on the job, and as a usage event, at once.
-- KEYS: the hold, the job, the usage stream
-- ARGV: cost (micros), then the usage event's fields as name, value pairs
-- Returns the hold's spend so far (-1 when the job has no hold).
local spent = -1
if redis.call('EXISTS', KEYS[1]) == 1 then spent = redis.call('HINCRBY', KEYS[1], 'spent', ARGV[1]) end
redis.call('HINCRBY', KEYS[2], 'cost_micros', ARGV[1])
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 2))
return spent
