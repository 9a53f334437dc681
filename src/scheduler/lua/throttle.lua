-- The CRM refused a request on one budget (503/429), by the rules of
-- `Budget::throttled` (src/scheduler/budget.rs is the reference): pause it
-- until now + Retry-After if one was given (never shortening a pause), and
-- let adaptation weigh the refusal of the send made `age` ago
-- (`adapt_refused`, from adapt.lua: the rate drops only when a test shows
-- it was the cause). It never shortens a pause.
--
-- KEYS[1] the budget's state hash, KEYS[2] its send log (see reserve.lua).
-- ARGV[1] limit, ARGV[2] decrease factor (0 = adaptation disabled: pause
--       only), ARGV[3] minimum rate (already capped at the limit),
--       ARGV[4] recovery (req/s per s), ARGV[5] window (µs),
--       ARGV[6] Retry-After (µs, 0 = none), ARGV[7] TTL of the keys (ms),
--       ARGV[8] how long before `now` the refused request was sent (µs).
-- `now` (µs) comes from the clock prepended to this script.
-- Returns 1.
local factor = tonumber(ARGV[2])
local retry = tonumber(ARGV[6])
if retry > 0 then
  local paused = tonumber(redis.call('HGET', KEYS[1], 'paused') or '0')
  redis.call('HSET', KEYS[1], 'paused', math.max(paused, now + retry))
end
if factor > 0 then
  local c = {limit = tonumber(ARGV[1]), window = tonumber(ARGV[5]), factor = factor,
    recovery = tonumber(ARGV[4]), floor = tonumber(ARGV[3])}
  local a = adapt_load(KEYS[1])
  adapt_refused(a, now, now - tonumber(ARGV[8]), c, KEYS[2])
  adapt_save(KEYS[1], a)
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[7]))
return 1
