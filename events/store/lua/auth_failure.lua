-- helpers: emit
-- Count one failed authentication from a client address in the current window. The first failure of the window
-- from that address goes to the audit stream in full; later ones are only counted, and the sweeper writes one
-- summary record per address when the window is over.
-- KEYS: the window's counts (hash: address -> failures), the windows index (sorted set), the audit stream
-- ARGV: address, window number, TTL of the counts (s), audit stream max length, now, audit data (JSON)
-- Returns how many failures the address has in this window, this one included.
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
if n == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[2])
  emit(KEYS[3], 'audit', '', 0, ARGV[5], 0, ARGV[6], ARGV[4])
end
return n
