-- Count one failed authentication from a client address in the current window. The first failure of the window
-- from that address goes to the audit stream in full; later ones are only counted, and the sweeper writes one
-- summary record per address when the window is over.
-- KEYS: the window's counts (hash: address -> failures), the windows index (sorted set), the audit stream
-- ARGV: address, window number, TTL of the counts (s), audit stream max length, then the audit event's fields
-- Returns how many failures the address has in this window, this one included.
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
if n == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[2])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 5))
end
return n
