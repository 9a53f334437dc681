-- Reserves the earliest slot among the budgets of a lane's egresses, by the
-- rules of `Budget::next_free` (src/scheduler/budget.rs is the reference):
-- pacing `window / rate` after the last send, the log of the last `limit`
-- sends (slot >= the limit-th latest + window), the adaptive rate
-- (`adapt_rate`, from adapt.lua) and any Retry-After pause. The
-- egress with the earliest such time (free longest, or soonest) is chosen,
-- ties to the first, as the local lane's `earliest` does; its slot is
-- recorded as taken. It never hands
-- out a slot earlier than those rules allow, and never more than one a call.
--
-- KEYS: per budget, a pair: the state hash (fields `last`, `paused` and
--       adaptation's, see adapt.lua; times in µs) and the send log (a list
--       of µs, oldest first, at most `limit` long).
-- ARGV[1] limit (sends per window), ARGV[2] window (µs), ARGV[3] recovery
--       (req/s regained per second), ARGV[4] TTL of the keys (ms),
--       ARGV[5] one '1' or '0' per budget: whether it may be used,
--       ARGV[6] '1' if adaptation is enabled (else its state is ignored),
--       ARGV[7] decrease factor, ARGV[8] minimum rate (capped at the limit).
-- The chosen slot is counted in adaptation's sample (`adapt_sent`).
-- `now` (µs) comes from the clock prepended to this script.
-- Returns {0-based index of the chosen budget, µs to wait (>= 0), the slot
-- (µs, this clock's base: what departed.lua takes)}, or an error reply if no
-- budget may be used.
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local recovery = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local allowed = ARGV[5]
local adaptive = ARGV[6] == '1'
local c = {limit = limit, window = window, factor = tonumber(ARGV[7]),
  recovery = recovery, floor = tonumber(ARGV[8])}
local best, best_at = nil, nil
for i = 1, #KEYS, 2 do
  local k = (i + 1) / 2
  if string.sub(allowed, k, k) == '1' then
    local st = redis.call('HMGET', KEYS[i], 'last', 'paused')
    -- Like `next_free`, this may lie in the past: the choice prefers the
    -- budget that has been free longest; the wait is clamped below.
    local at
    if st[1] then
      local rate = limit
      if adaptive then rate = adapt_rate(adapt_load(KEYS[i]), now, c) end
      at = tonumber(st[1]) + math.ceil(window / rate)
      local n = redis.call('LLEN', KEYS[i + 1])
      if n >= limit then
        at = math.max(at, tonumber(redis.call('LINDEX', KEYS[i + 1], n - limit)) + window)
      end
      if st[2] then at = math.max(at, tonumber(st[2])) end
    else
      at = tonumber(st[2]) or now
    end
    if best_at == nil or at < best_at then best, best_at = i, at end
  end
end
if best == nil then return redis.error_reply('no budget may be used') end
best_at = math.max(best_at, now)
redis.call('HSET', KEYS[best], 'last', best_at)
redis.call('RPUSH', KEYS[best + 1], best_at)
redis.call('LTRIM', KEYS[best + 1], -limit, -1)
if adaptive then
  local a = adapt_load(KEYS[best])
  adapt_sent(a, best_at, c)
  adapt_save(KEYS[best], a)
end
redis.call('PEXPIRE', KEYS[best], ttl)
redis.call('PEXPIRE', KEYS[best + 1], ttl)
return {(best - 1) / 2, best_at - now, best_at}
