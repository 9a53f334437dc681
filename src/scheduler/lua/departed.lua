-- A send left later than its reserved slot, by the rule of
-- `Budget::left_late` (src/scheduler/budget.rs is the reference): every
-- send the log holds in [slot, slot + late) counts from slot + late, so the
-- next slots move with it and the log stays in order. Unlike connected.lua
-- it has no slack: only the sends between this one's slot and its
-- departure move (at most one or two other replicas' sends, a few ms each),
-- never the fleet's on-time sends before it. No send ever moves earlier.
--
-- KEYS[1] the budget's state hash, KEYS[2] its send log (see reserve.lua).
-- ARGV[1] the slot as reserve.lua returned it (µs, Redis's time base),
-- ARGV[2] how late the send left (µs).
-- Needs no clock: both times are on the log's own base.
-- Returns the number of log entries moved.
local from = tonumber(ARGV[1])
local to = from + tonumber(ARGV[2])
local moved = 0
local log = redis.call('LRANGE', KEYS[2], 0, -1)
for i, v in ipairs(log) do
  local at = tonumber(v)
  if at >= from and at < to then
    redis.call('LSET', KEYS[2], i - 1, to)
    moved = moved + 1
  end
end
local last = tonumber(redis.call('HGET', KEYS[1], 'last') or '0')
if last >= from and last < to then redis.call('HSET', KEYS[1], 'last', to) end
return moved
