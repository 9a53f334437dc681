-- Adaptation, by the rules of `scheduler::adapt` (src/scheduler/adapt.rs is
-- the reference; docs/architecture.md, "Adaptation"): a 503 lowers the rate
-- only when a test shows the rate was its cause, and a limited rate probes
-- upwards, half way to the lowest rate known to be refused. Prepended (after
-- the clock) to reserve.lua and throttle.lua; defines functions, runs nothing.
--
-- The state lives in the budget's hash, beside `last` and `paused`:
--   ph      phase: 'O' observe, 'T' test, 'L' limited, absent/'F' free
--   r since            free: rate at `since` (absent or -1: the limit)
--   before from n1 k1 n2 k2 rd sb sc   observe/test: the sample since the
--                      onset, its rounds judged, and the limited state it
--                      came from (sb base, sc ceiling; sb -1: from free)
--   good base ceil dip hold bl   limited: good rate, tested rate, lowest
--                      refused rate (-1: none), end of a dip, probe start,
--                      1 while the tested rate is a blind cut no probe
--                      has failed above
--   quiet ignore lhold nhold   hold-off end, judged-before time, next holds
-- Times in µs on the scripts' clock, rates in sends per window.
-- `c` is {limit, window, factor, recovery (per s), floor}.

local LIMIT_HOLD = 5000000
local LIMIT_HOLD_MAX = 300000000
local NOISE_HOLD = 10000000
local NOISE_HOLD_MAX = 30000000
local MIN_TEST_SENDS = 3
local Z = 2.0
local OBSERVE_WINDOWS = 2
local MAX_ROUNDS = 4
local PLATEAU = 5000000
local MIN_GAP = 0.5
local ESTIMATE_MARGIN = 0.95
local FIELDS = {'ph', 'r', 'since', 'before', 'from', 'n1', 'k1', 'n2', 'k2',
  'rd', 'sb', 'sc', 'good', 'base', 'ceil', 'dip', 'hold', 'bl', 'quiet',
  'ignore', 'lhold', 'nhold'}

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

-- The test rate of the sample in `a`: a margin under the rate the CRM
-- accepted while observed, never below `lowered`.
local function test_rate(c, a)
  local low = lowered(c, a.before)
  if a.n1 == 0 then return low end
  local accepted = 1 - math.min(a.k1 / a.n1, 1)
  return math.max(a.before * accepted * ESTIMATE_MARGIN, low)
end

-- Times of the test's timeline for an onset at `from`.
local function observed(c, from) return from + OBSERVE_WINDOWS * c.window end
local function sample_start(c, from) return from + (OBSERVE_WINDOWS + 1) * c.window end
local function sample_end(c, from, rounds) return sample_start(c, from) + 2 * rounds * c.window end
local function verdict(c, from, round) return sample_end(c, from, round) + 0.5 * c.window end

-- The rate a probe from `good` aims at (ceil -1: none known).
local function probe_target(c, good, ceil)
  if ceil < 0 then return c.limit end
  if ceil - good >= MIN_GAP then return math.min((good + ceil) / 2, c.limit) end
  return c.limit
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
-- send accepted (2 x the test rate per round; only a sample without
-- refusals goes on to another round).
local function could_prove(a, c)
  local rounds = a.rd + 1
  if a.k2 == 0 then rounds = MAX_ROUNDS end
  local most = math.ceil(2 * rounds * test_rate(c, a))
  local b = {n1 = a.n1, k1 = a.k1, n2 = math.max(a.n2, most), k2 = a.k2}
  return cause(b)
end

-- Back to where the onset came from: free at `before`, or limited again.
local function back(a, at)
  if a.sb and a.sb >= 0 then
    a.ph, a.good, a.base, a.ceil, a.dip, a.hold = 'L', a.before, a.sb, a.sc, at, at + a.lhold
    a.bl = 0
  else
    a.ph, a.r, a.since = 'F', a.before, at
  end
end

-- The verdict "noise" at `at`: back to `before` (free), hold-off (doubling).
local function noise(a, at)
  a.ignore = at
  a.quiet = at + a.nhold
  a.nhold = math.min(a.nhold * 2, NOISE_HOLD_MAX)
  a.ph, a.r, a.since = 'F', a.before, at
end

-- Timed transitions up to `now`: end of observation, verdicts, probes.
local function advance(a, now, c)
  while true do
    if a.ph == 'O' and now >= observed(c, a.from) then
      local at = observed(c, a.from)
      if a.k1 >= 1 then
        a.ph = 'T'
      else
        a.nhold = NOISE_HOLD
        back(a, at)
      end
    elseif a.ph == 'T' and now >= verdict(c, a.from, a.rd + 1) then
      local at = verdict(c, a.from, a.rd + 1)
      local rounds = a.rd + 1
      if cause(a) and a.n2 >= MIN_TEST_SENDS then
        a.ignore = at
        a.nhold = NOISE_HOLD
        local good = test_rate(c, a)
        a.ph, a.good, a.base, a.ceil, a.dip = 'L', good, good, -1, at
        if good <= lowered(c, a.before) then a.bl = 1 else a.bl = 0 end
        a.hold = math.max(at, observed(c, a.from) + a.lhold)
      elseif rounds < MAX_ROUNDS and a.k2 == 0 and could_prove(a, c) then
        a.rd = rounds
      elseif a.n2 < MIN_TEST_SENDS then
        a.ignore = at
        back(a, at)
      else
        noise(a, at)
      end
    elseif a.ph == 'L' then
      local target = probe_target(c, a.good, a.ceil)
      local passed = a.hold + math.max(target - a.good, 0) / c.recovery * 1000000 + PLATEAU
      if now < passed then return end
      a.lhold = LIMIT_HOLD
      if target >= c.limit then
        a.ph, a.r, a.since = 'F', -1, passed
      else
        a.good, a.dip, a.hold, a.bl = target, passed, passed, 0
      end
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
    rate = test_rate(c, b)
  elseif b.ph == 'L' then
    if now < b.dip then
      rate = lowered(c, b.good)
    else
      rate = math.min(b.good + c.recovery * math.max(now - b.hold, 0) / 1000000,
        probe_target(c, b.good, b.ceil))
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
    if at > a.from and at < observed(c, a.from) then
      a.n1 = a.n1 + 1
    elseif at >= sample_start(c, a.from) and at < sample_end(c, a.from, MAX_ROUNDS) then
      a.n2 = a.n2 + 1
    end
  end
end

local function onset(a, before, sb, sc, from, log)
  local n = 0
  for _, v in ipairs(redis.call('LRANGE', log, 0, -1)) do
    if tonumber(v) > from then n = n + 1 end
  end
  a.ph, a.before, a.from, a.sb, a.sc = 'O', before, from, sb, sc
  a.n1, a.k1, a.n2, a.k2, a.rd = n, 0, 0, 0, 0
end

-- The CRM refused, answered at `now`, the send made at `sent`; `log` is the
-- budget's send log key.
local function adapt_refused(a, now, sent, c, log)
  advance(a, now, c)
  if a.ignore and sent < a.ignore then return end
  if a.ph == 'O' or a.ph == 'T' then
    if sent > a.from and sent < observed(c, a.from) then
      a.k1 = a.k1 + 1
    elseif sent >= sample_start(c, a.from) and sent < sample_end(c, a.from, MAX_ROUNDS) then
      a.k2 = a.k2 + 1
      if not could_prove(a, c) then noise(a, now) end
    end
  elseif a.ph == 'L' then
    if sent >= a.hold then
      -- A failed probe: its rate at the send is the new ceiling; after a
      -- blind cut, half way to it is the good rate (at least the
      -- estimate's margin under it).
      local failed = adapt_rate(a, sent, c)
      if a.ceil >= 0 then failed = math.min(failed, a.ceil) end
      a.lhold = math.min(a.lhold * 2, LIMIT_HOLD_MAX)
      if a.bl == 1 then
        a.good = math.max(a.good, math.min((a.good + failed) / 2, failed * ESTIMATE_MARGIN))
      end
      a.bl = 0
      a.ceil = failed
      a.dip = now + c.window
      a.hold = a.dip + a.lhold
      a.ignore = a.dip
    elseif sent >= a.dip and a.good > a.base then
      -- A probe that held is refused after all: back to the tested rate.
      a.lhold = math.min(a.lhold * 2, LIMIT_HOLD_MAX)
      a.ceil = a.good
      a.good = a.base
      a.bl = 0
      a.dip = now + c.window
      a.hold = a.dip + a.lhold
      a.ignore = a.dip
    elseif sent >= a.dip then
      onset(a, a.good, a.base, a.ceil, sent, log)
    end
  else
    if a.quiet and now < a.quiet then return end
    onset(a, adapt_rate(a, now, c), -1, -1, sent, log)
  end
end
