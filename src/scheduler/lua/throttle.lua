-- The CRM refused a request on one budget (503/429), by the rules of
-- `Budget::throttled` (src/scheduler/budget.rs is the reference): pause it
-- until now + Retry-After if one was given (never shortening a pause), and,
-- at most once per window (several 503s are one overload), cut the
-- effective rate to `rate * decrease factor`, but not below the minimum.
-- It never shortens a pause and never raises the rate.
--
-- KEYS[1] the budget's state hash (see reserve.lua).
-- ARGV[1] limit, ARGV[2] decrease factor (0 = adaptation disabled: pause
--       only), ARGV[3] minimum rate (already capped at the limit),
--       ARGV[4] recovery (req/s per s), ARGV[5] window (µs),
--       ARGV[6] Retry-After (µs, 0 = none), ARGV[7] TTL of the key (ms).
-- `now` (µs) comes from the clock prepended to this script.
-- Returns 1.
local limit = tonumber(ARGV[1])
local factor = tonumber(ARGV[2])
local st = redis.call('HMGET', KEYS[1], 'cut_rate', 'cut_at', 'paused')
local retry = tonumber(ARGV[6])
if retry > 0 then
  redis.call('HSET', KEYS[1], 'paused', math.max(tonumber(st[3] or 0), now + retry))
end
if factor > 0 and (not st[2] or now - tonumber(st[2]) >= tonumber(ARGV[5])) then
  local rate = limit
  if st[1] then
    rate = math.min(limit, tonumber(st[1]) + tonumber(ARGV[4]) * (now - tonumber(st[2])) / 1000000)
  end
  local lowered = math.max(tonumber(ARGV[3]), rate * factor)
  redis.call('HSET', KEYS[1], 'cut_rate', lowered, 'cut_at', now)
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[7]))
return 1
