-- helpers: emit
-- A window of failed authentications is over: write one audit record per address that failed more than once
-- (with the count), then forget the window.
-- KEYS: the window's counts, the windows index, the audit stream
-- ARGV: window number, window start (epoch s), window length (s), now, audit stream max length
-- Returns how many summary records were written.
local counts = redis.call('HGETALL', KEYS[1])
local written = 0
for i = 1, #counts, 2 do
  local n = tonumber(counts[i + 1])
  if n > 1 then
    local data = cjson.encode({actor = 'anonymous', action = 'auth.failures', resource = '', result = 'failure',
      ip = counts[i], details = {count = n, window_start = tonumber(ARGV[2]), window_s = tonumber(ARGV[3])}})
    emit(KEYS[3], 'audit', '', 0, ARGV[4], 0, data, ARGV[5])
    written = written + 1
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return written
