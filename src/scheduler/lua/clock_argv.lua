-- The clock of the scripts under test only: `now` (µs, any epoch) is the
-- script's last ARGV, so a test can drive Redis and the Rust `Budget` on one
-- time base. Never used outside `RedisBudget::with_clock`.
local now = tonumber(ARGV[#ARGV])
