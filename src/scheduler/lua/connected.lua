-- Sends on one budget reached the CRM later than their slots (a connect
-- that took `by`, or a replica that woke late), by the rules of
-- `Budget::connect_finished` (src/scheduler/budget.rs is the reference):
-- every send reserved in [now - by - slack, now) counts from now; no send
-- ever moves earlier. The local budget also holds slots while a connect is
-- in progress; the shared one does not (docs/architecture.md, "Shared
-- budgets").
--
-- KEYS[1] the budget's state hash, KEYS[2] its send log (see reserve.lua).
-- ARGV[1] by (µs), ARGV[2] slack before it (µs, `CONNECT_SLACK`).
-- `now` (µs) comes from the clock prepended to this script.
-- Returns 1.
local from = now - tonumber(ARGV[1]) - tonumber(ARGV[2])
local log = redis.call('LRANGE', KEYS[2], 0, -1)
for i, v in ipairs(log) do
  local at = tonumber(v)
  if at >= from and at < now then redis.call('LSET', KEYS[2], i - 1, now) end
end
local last = tonumber(redis.call('HGET', KEYS[1], 'last') or '0')
if last >= from and last < now then redis.call('HSET', KEYS[1], 'last', now) end
return 1
