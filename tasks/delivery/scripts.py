"""The delivery layer's Lua scripts. Each is one atomic step on the Redis server; that is the
point of them: no process can die, pause or be cut off halfway through one.

Redis runs a script to the end without interleaving other commands, but does not roll back
what a failing script wrote before its error, so every script decodes and checks what it
reads before it writes anything (cjson under pcall).
"""

from __future__ import annotations

# Take up to ARGV[1] messages from the queue lists KEYS[4..] (in that order: priority band
# first, then queue) and, in the same step, record each one in the taker's unacked hash
# KEYS[1] (tag -> [message, exchange, routing_key], kombu's own layout) and its index KEYS[2]
# (tag -> server time). ARGV[2] holds one flag per list, "1" where the consumer acknowledges
# (a no_ack consumer's messages are not recorded). A fenced taker (KEYS[3] exists) takes
# nothing. One doorbell of the queue is taken per message (ARGV[3] is the doorbell prefix, the
# list key up to kombu's priority separator is the queue), so doorbells track messages.
# Returns a flat list: list key, message, list key, message, ...
RESERVE = """
if redis.call('EXISTS', KEYS[3]) == 1 then
  return redis.error_reply('AGENTFUL_FENCED this worker incarnation was declared dead')
end
local out = {}
local limit = tonumber(ARGV[1])
local now = nil
for i = 4, #KEYS do
  while #out < 2 * limit do
    local item = redis.call('RPOP', KEYS[i])
    if not item then break end
    if string.byte(ARGV[2], i - 3) == 49 then
      local ok, msg = pcall(cjson.decode, item)
      if ok and type(msg) == 'table' and type(msg['properties']) == 'table' then
        local props = msg['properties']
        local info = props['delivery_info']
        local tag = props['delivery_tag']
        if type(tag) == 'string' and type(info) == 'table' then
          if now == nil then
            local t = redis.call('TIME')
            now = tonumber(t[1]) + tonumber(t[2]) / 1000000
          end
          redis.call('ZADD', KEYS[2], now, tag)
          redis.call('HSET', KEYS[1], tag, '[' .. item .. ',' .. cjson.encode(info['exchange'] or '')
            .. ',' .. cjson.encode(info['routing_key'] or '') .. ']')
        end
      end
    end
    local sep = string.find(KEYS[i], '\6\22', 1, true)
    redis.call('RPOP', ARGV[3] .. (sep and string.sub(KEYS[i], 1, sep - 1) or KEYS[i]))
    out[#out + 1] = KEYS[i]
    out[#out + 1] = item
  end
  if #out >= 2 * limit then break end
end
return out
"""

# Acknowledge tag ARGV[1]: drop it from unacked KEYS[1] and index KEYS[2], unless the
# incarnation is fenced (KEYS[3]): then what it held belongs to the worker restoring it, and
# deleting an entry before that worker read it would lose the call.
ACK = """
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])
"""

# A worker's heartbeat, on the server's clock (hosts' clocks may differ). KEYS: [1] the
# incarnation set, [2] the incarnation's fence marker, [3] the node's registry entry, [4] the
# incarnation's description, [5] the worker set. ARGV: [1] the incarnation ('-': none),
# [2] the entry's JSON ('': leave the entry), [3] its expiry in ms, [4] the node, [5..]
# description field/value pairs. Refused (-1) once the incarnation is fenced. Returns the
# server time.
BEAT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if ARGV[1] ~= '-' then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  if #ARGV >= 6 then redis.call('HSET', KEYS[4], unpack(ARGV, 5)) end
  redis.call('PEXPIRE', KEYS[4], 86400000)
end
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
  redis.call('ZADD', KEYS[5], now, ARGV[4])
end
return tostring(now)
"""

# Take the claim KEYS[1] of a call for incarnation ARGV[1] (task ARGV[2]; the claim lives
# ARGV[3] ms). KEYS[2]: the taker's fence marker, KEYS[3]: the token counter, KEYS[4]: the
# incarnation set, KEYS[5]: the call's result key; ARGV[4]: the fence marker prefix; ARGV[5]:
# the taker's nonce, the same for every try of one take: a try whose reply was lost (the broker
# killed after it wrote the claim, before it answered) is answered 'own' again by the next
# try, instead of 'wait' for itself. A claim is deleted once its result is final, so a stored
# final result means done. Verdicts:
#   {'own', token, attempt}  the caller runs the call (first, or after a dead owner, or a retry)
#   {'wait', owner}          a live incarnation runs it now
#   {'done', ''}             its result is stored
#   {'fenced'}               the caller itself was declared dead
CLAIM = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {'fenced'} end
local result = redis.call('GET', KEYS[5])
if result and (string.find(result, '^{"status": "SUCCESS"') or string.find(result, '^{"status": "FAILURE"')
    or string.find(result, '^{"status": "REVOKED"')) then
  return {'done', ''}
end
local c = redis.call('HMGET', KEYS[1], 'owner', 'state', 'attempt', 'nonce', 'token')
local owner, state = c[1], c[2]
local attempt = tonumber(c[3] or '0') or 0
if owner == ARGV[1] and state == 'running' and c[4] == ARGV[5] then
  return {'own', c[5], tostring(attempt)}
end
if owner and state == 'running' then
  local dead = redis.call('EXISTS', ARGV[4] .. owner) == 1
  if not dead and not redis.call('ZSCORE', KEYS[4], owner) then dead = true end
  if not dead then return {'wait', owner} end
end
local token = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'state', 'running', 'attempt', attempt + 1,
  'token', token, 'task', ARGV[2], 'nonce', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'own', tostring(token), tostring(attempt + 1)}
"""

# Store a call's result KEYS[1] = ARGV[1] (expiring in ARGV[2] ms, 0: never) only while the
# claim KEYS[2] still has token ARGV[3] and its owner is not fenced (KEYS[3]); a SUCCESS already
# stored is never overwritten (Celery's own rule, here in the same step). Publishes the value on
# the key's channel as Celery's Redis backend does. ARGV[4] is what becomes of the claim: 'done'
# deletes it (the final result now says done), 'free' lets a retry take it, '' keeps it.
# 1: stored, 0: dropped.
STORE = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('HGET', KEYS[2], 'token') ~= ARGV[3] then return 0 end
local cur = redis.call('GET', KEYS[1])
if cur and string.find(cur, '^{"status": "SUCCESS"') then return 0 end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
if ARGV[4] == 'done' then
  redis.call('DEL', KEYS[2])
elseif ARGV[4] ~= '' then
  redis.call('HSET', KEYS[2], 'state', ARGV[4])
end
return 1
"""

# Release the claim KEYS[1] that incarnation ARGV[1] holds, running (its execution was lost
# with a crashed pool process, and Celery requeues the call), so that a copy may take it.
RELEASE = """
local c = redis.call('HMGET', KEYS[1], 'owner', 'state')
if c[1] ~= ARGV[1] or c[2] ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'free')
return 1
"""

# Whether the claim KEYS[1] still has token ARGV[1] and its owner is not fenced (KEYS[2]).
OWNS = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
return 1
"""
