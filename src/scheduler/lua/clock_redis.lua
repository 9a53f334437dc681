-- The clock of every production script: Redis's own TIME, in µs. Replicas
-- never send their clocks, so skew between them cannot break a budget.
-- Prepended to each script by `scheduler::shared`; defines `now`.
local now
do
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
