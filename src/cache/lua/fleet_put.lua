-- Stores one fleet cache entry, if its dictionary's generation is still the
-- one its read started under, and keeps all entries within a byte bound:
-- entries past their lifetime leave the books first, then the ones that
-- expire soonest are evicted until the bound holds. Every key shares one
-- hash tag, so a Redis Cluster runs this on one node.
--
-- KEYS[1] the entry, KEYS[2] the generation, KEYS[3] the index (a sorted
-- set: entry key -> expiry, ms), KEYS[4] the bytes held (a counter),
-- KEYS[5] each entry's size (a hash: entry key -> bytes).
-- ARGV[1] status, ARGV[2] headers, ARGV[3] body, ARGV[4] TTL (ms),
-- ARGV[5] lifetime (ms: TTL plus stale_if_error), ARGV[6] the generation
-- the read started under, ARGV[7] the bound (bytes).
-- Returns 1 if stored, 0 if not (a write since, or larger than the bound).
local gen = redis.call('GET', KEYS[2]) or '0'
if gen ~= ARGV[6] then return 0 end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local max = tonumber(ARGV[7])
local function forget(member)
  local size = tonumber(redis.call('HGET', KEYS[5], member) or '0')
  if size > 0 then redis.call('DECRBY', KEYS[4], size) end
  redis.call('HDEL', KEYS[5], member)
  redis.call('ZREM', KEYS[3], member)
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_ms)) do forget(m) end
forget(KEYS[1])
local size = #ARGV[1] + #ARGV[2] + #ARGV[3] + #KEYS[1] + 64
if size > max then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'headers', ARGV[2], 'body', ARGV[3],
  'stored', now_us, 'ttl', ARGV[4], 'gen', gen)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[3], now_ms + tonumber(ARGV[5]), KEYS[1])
redis.call('HSET', KEYS[5], KEYS[1], size)
local held = redis.call('INCRBY', KEYS[4], size)
while held > max do
  local oldest = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if not oldest then break end
  redis.call('DEL', oldest)
  forget(oldest)
  held = tonumber(redis.call('GET', KEYS[4]) or '0')
end
return 1
