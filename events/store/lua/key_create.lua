-- Create an API key record carrying its user's role and agents as they are now, read in the same step: a role
-- change can never fall between reading the role and writing the key.
-- KEYS: the user, the user's keys (hash: key id -> key hash), the new key's record
-- ARGV: key id, key hash, then the record's other fields as name, value pairs
-- Returns 1, or 0 when the user does not exist.
local user = redis.call('HMGET', KEYS[1], 'role', 'agents')
if not user[1] then return 0 end
redis.call('HSET', KEYS[3], 'role', user[1], 'agents', user[2] or '', unpack(ARGV, 3))
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
