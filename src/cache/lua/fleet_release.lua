-- Releases a fill lock if this replica still holds it (its token), so a
-- lock that expired and was taken by another replica is left alone.
-- KEYS[1] the lock, ARGV[1] the token. Returns 1 if released.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
