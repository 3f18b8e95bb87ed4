-- Set fields on a user and on every key record of theirs at once (authentication reads role and agents from the
-- key record). The caller names the key records it found; when the user has a key it did not name (one was made
-- meanwhile), nothing is written and the caller reads the keys again.
-- KEYS: the user, the user's keys (hash: key id -> key hash), then each key record the caller found
-- ARGV: n, the n key hashes the caller found (in the order of KEYS), then field, value pairs
-- Returns 'ok', 'missing' (no such user) or 'moved'.
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
local n = tonumber(ARGV[1])
local current = redis.call('HVALS', KEYS[2])
if #current ~= n then return 'moved' end
local named = {}
for i = 1, n do named[ARGV[1 + i]] = true end
for _, hashed in ipairs(current) do
  if not named[hashed] then return 'moved' end
end
local fields = {unpack(ARGV, n + 2)}
redis.call('HSET', KEYS[1], unpack(fields))
for i = 3, #KEYS do redis.call('HSET', KEYS[i], unpack(fields)) end
return 'ok'
