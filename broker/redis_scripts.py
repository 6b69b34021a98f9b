"""The broker's two Redis scripts: each is one atomic step, so no crash leaves a request half-sent
or half-answered. Keys are passed in (the prefix is the caller's); see ``broker.redis_streams``."""

# KEYS: count, stream, counters, answer, reply, sent · ARGV: max per objective, ttl, maxlen, request json,
# id, resend (1 after a lost connection). Returns the request's number within its objective, or 0 when
# it needs no new entry: answered already (the answer goes on the reply list again) or sent already
# (``sent`` holds while the asker may wait; a re-send adds an entry marked ``resent``). Something is on
# the reply list at once unless the request is out, so the asker sends and waits in one round trip.
SEND = """
local answer = redis.call('GET', KEYS[4])
if answer then
  redis.call('LPUSH', KEYS[5], answer)
  redis.call('EXPIRE', KEYS[5], ARGV[2])
  return 0
end
local resend = ARGV[6] == '1'
local n = 0
if redis.call('EXISTS', KEYS[6]) == 0 then
  n = redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  if n > tonumber(ARGV[1]) then
    redis.call('HINCRBY', KEYS[3], 'refused.cap', 1)
    redis.call('LPUSH', KEYS[5], 'refused:cap')
    redis.call('EXPIRE', KEYS[5], ARGV[2])
    return n
  end
  redis.call('SET', KEYS[6], '1', 'EX', ARGV[2])
  redis.call('HINCRBY', KEYS[3], 'requests', 1)
elseif not resend then
  return 0
end
if resend then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'id', ARGV[5], 'request', ARGV[4], 'resent', '1')
  redis.call('HINCRBY', KEYS[3], 'resent', 1)
else
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'id', ARGV[5], 'request', ARGV[4])
end
return n
"""

# KEYS: answer, reply, stream, counters · ARGV: reply json, ttl, entry id. The entry is acknowledged
# and deleted: a stream holds only what is still to answer (and MAXLEN bounds that backlog).
ANSWER = """
local first = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
if first then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  redis.call('HINCRBY', KEYS[4], 'replies', 1)
else
  redis.call('HINCRBY', KEYS[4], 'duplicates', 1)
end
redis.call('XACK', KEYS[3], 'responders', ARGV[3])
redis.call('XDEL', KEYS[3], ARGV[3])
return first and 1 or 0
"""
