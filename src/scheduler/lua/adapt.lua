-- Adaptation, by the rules of `scheduler::adapt` (src/scheduler/adapt.rs is
-- the reference; docs/architecture.md, "Adaptation"): a 503 lowers the rate
-- only when a test shows the rate was its cause. Prepended (after the clock)
-- to reserve.lua and throttle.lua; defines functions, runs nothing.
--
-- The state lives in the budget's hash, beside `last` and `paused`:
--   ph      phase: 'O' observe, 'T' test, 'L' limited, absent/'F' free
--   r since            free: rate at `since` (absent or -1: the limit)
--   before from n1 k1 n2 k2   observe/test: the sample since the onset
--   good dip hold      limited: good rate, end of a dip, start of the rise
--   quiet ignore lhold nhold   hold-off end, judged-before time, next holds
-- Times in µs on the scripts' clock, rates in sends per window.
-- `c` is {limit, window, factor, recovery (per s), floor}.

local LIMIT_HOLD = 5000000
local LIMIT_HOLD_MAX = 300000000
local NOISE_HOLD = 10000000
local NOISE_HOLD_MAX = 30000000
local MIN_TEST_SENDS = 3
local Z = 2.5
local FIELDS = {'ph', 'r', 'since', 'before', 'from', 'n1', 'k1', 'n2', 'k2',
  'good', 'dip', 'hold', 'quiet', 'ignore', 'lhold', 'nhold'}

local function adapt_load(key)
  local raw = redis.call('HMGET', key, unpack(FIELDS))
  local a = {}
  for i, f in ipairs(FIELDS) do
    if raw[i] then
      if f == 'ph' then a[f] = raw[i] else a[f] = tonumber(raw[i]) end
    end
  end
  a.ph = a.ph or 'F'
  a.lhold = a.lhold or LIMIT_HOLD
  a.nhold = a.nhold or NOISE_HOLD
  return a
end

local function adapt_save(key, a)
  local args = {}
  for _, f in ipairs(FIELDS) do
    if a[f] ~= nil then
      args[#args + 1] = f
      args[#args + 1] = a[f]
    end
  end
  redis.call('HSET', key, unpack(args))
end

local function lowered(c, before)
  return math.max(before * c.factor, c.floor)
end

local function cause(a)
  local n1, k1 = math.max(a.n1, 1), a.k1
  local n2, k2 = math.max(a.n2, 1), a.k2
  local p1, p2 = math.min(k1 / n1, 1), math.min(k2 / n2, 1)
  local p = math.min((k1 + k2) / (n1 + n2), 1)
  local sigma = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
  return p1 - p2 > Z * sigma
end

-- Whether the test could still prove the cause were every remaining sample
-- send accepted (at most 2 x the test rate fit in its two windows).
local function could_prove(a, c)
  local most = math.ceil(2 * lowered(c, a.before))
  local b = {n1 = a.n1, k1 = a.k1, n2 = math.max(a.n2, most), k2 = a.k2}
  return cause(b)
end

-- The verdict "noise" at `at`: back to `before`, hold-off (doubling).
local function noise(a, at)
  a.ignore = at
  a.quiet = at + a.nhold
  a.nhold = math.min(a.nhold * 2, NOISE_HOLD_MAX)
  a.ph, a.r, a.since = 'F', a.before, at
end

-- Timed transitions up to `now`: end of observation, verdict, end of rise.
local function advance(a, now, c)
  while true do
    if a.ph == 'O' and now >= a.from + c.window then
      if a.k1 >= 1 and could_prove(a, c) then
        a.ph = 'T'
      elseif a.k1 >= 1 then
        noise(a, a.from + c.window)
      else
        a.nhold = NOISE_HOLD
        a.ph, a.r, a.since = 'F', a.before, a.from + c.window
      end
    elseif a.ph == 'T' and now >= a.from + 4.5 * c.window then
      local at = a.from + 4.5 * c.window
      a.ignore = at
      if a.n2 < MIN_TEST_SENDS then
        a.ph, a.r, a.since = 'F', a.before, at
      elseif cause(a) then
        a.nhold = NOISE_HOLD
        a.ph, a.good, a.dip, a.hold = 'L', lowered(c, a.before), at, at + a.lhold
      else
        noise(a, at)
      end
    elseif a.ph == 'L' then
      local reached = a.hold + math.max(c.limit - a.good, 0) / c.recovery * 1000000
      if now < reached then return end
      a.lhold = LIMIT_HOLD
      a.ph, a.r, a.since = 'F', -1, reached
    else
      return
    end
  end
end

local function copy(a)
  local b = {}
  for k, v in pairs(a) do b[k] = v end
  return b
end

-- Sends per window allowed at `now` (pure: `a` is not changed).
local function adapt_rate(a, now, c)
  local b = copy(a)
  advance(b, now, c)
  local rate
  if b.ph == 'O' then
    rate = b.before
  elseif b.ph == 'T' then
    rate = lowered(c, b.before)
  elseif b.ph == 'L' then
    if now < b.dip then
      rate = lowered(c, b.good)
    else
      rate = b.good + c.recovery * math.max(now - b.hold, 0) / 1000000
    end
  else
    if b.r == nil or b.r < 0 then return c.limit end
    rate = b.r + c.recovery * math.max(now - b.since, 0) / 1000000
  end
  return math.min(rate, c.limit)
end

-- A send at `at`, counted in the sample whose window holds it.
local function adapt_sent(a, at, c)
  advance(a, at, c)
  if a.ph == 'O' or a.ph == 'T' then
    if at > a.from and at < a.from + c.window then
      a.n1 = a.n1 + 1
    elseif at >= a.from + 2 * c.window and at < a.from + 4 * c.window then
      a.n2 = a.n2 + 1
    end
  end
end

local function onset(a, before, from, log)
  local n = 0
  for _, v in ipairs(redis.call('LRANGE', log, 0, -1)) do
    if tonumber(v) > from then n = n + 1 end
  end
  a.ph, a.before, a.from = 'O', before, from
  a.n1, a.k1, a.n2, a.k2 = n, 0, 0, 0
end

-- The CRM refused, answered at `now`, the send made at `sent`; `log` is the
-- budget's send log key.
local function adapt_refused(a, now, sent, c, log)
  advance(a, now, c)
  if a.ignore and sent < a.ignore then return end
  if a.ph == 'O' or a.ph == 'T' then
    if sent > a.from and sent < a.from + c.window then
      a.k1 = a.k1 + 1
    elseif sent >= a.from + 2 * c.window and sent < a.from + 4 * c.window then
      a.k2 = a.k2 + 1
      if not could_prove(a, c) then noise(a, now) end
    end
  elseif a.ph == 'L' then
    if sent >= a.hold then
      a.lhold = math.min(a.lhold * 2, LIMIT_HOLD_MAX)
      a.dip = now + c.window
      a.hold = a.dip + a.lhold
      a.ignore = a.dip
    elseif sent >= a.dip then
      onset(a, a.good, sent, log)
    end
  else
    if a.quiet and now < a.quiet then return end
    onset(a, adapt_rate(a, now, c), sent, log)
  end
end
