-- Reads one fleet cache entry and the generation of its dictionary, on
-- Redis time. An entry filled under an older generation (a write to its
-- dictionary happened since) is not returned: no answer outlives a write it
-- might not reflect.
--
-- KEYS[1] the entry (a hash: status, headers, body, stored µs, ttl ms, gen),
-- KEYS[2] the generation of its tenant's dictionary ('0' when unset).
-- Returns {generation, status, headers, body, age µs, ttl ms}, or
-- {generation} when there is no live entry.
local gen = redis.call('GET', KEYS[2]) or '0'
local v = redis.call('HMGET', KEYS[1], 'status', 'headers', 'body', 'stored', 'ttl', 'gen')
if not v[1] or v[6] ~= gen then return {gen} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
return {gen, v[1], v[2], v[3], tostring(now - tonumber(v[4])), v[5]}
