"""The Lua scripts of the lease. Each acts only while the lease key holds the caller's value, so a lease
that changed hands is never extended or deleted by its old owner; every key a script touches carries
the lease's hash tag (store.keys), so a cluster-mode Redis runs it on one shard."""

# KEYS[1] lease key, KEYS[2] epoch key, KEYS[3] our candidate key, KEYS[4] switchover request,
# KEYS[5] the last grant (a hash: the holder's value, node, epoch, Redis's time in ms of the grant or
# its release, and why it was released), KEYS[6] the pause, KEYS[7] the priorities (a hash: node ->
# "priority:expiry ms"), KEYS[8] when the lease was first found free by a candidate yielding it;
# ARGV[1] our value, ARGV[2] lease in ms, ARGV[3] our node name, ARGV[4] our candidate record,
# ARGV[5] the highest epoch we have seen, ARGV[6] our priority, ARGV[7] how long we yield, in ms.
# Takes the lease if nobody holds it and bumps the fencing epoch in the same step, above every epoch
# we have seen, so epochs keep rising even if Redis lost the epoch key (a restart without it).
# Held back: a pending switchover holds back the leader that asked to step down and every node it did
# not name; without one, a pause holds everybody back (a switchover is an explicit act, so it still goes
# through), and a free lease is yielded to a live candidate of higher priority for ARGV[7] ms after a
# yielding candidate first found it free. Priority 0 never takes the lease. Only ever holds back: the
# one SET NX is still the only way to the lease.
# A loser refreshes its candidate record and priority (TTL = lease), so standbys cost one call per try.
# Returns {1, new epoch, the previous grant's value, node, epoch, time, reason (false for what it did
# not have), now} when won, else {0, holder value, current epoch, ms until worth trying again (the lease's
# TTL, or what is left of a yield), 1 if paused else 0, the node yielded to or ''}.
ACQUIRE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local priority = tonumber(ARGV[6])
redis.call('HSET', KEYS[7], ARGV[3], priority .. ':' .. (now + tonumber(ARGV[2])))
local paused = redis.call('EXISTS', KEYS[6]) == 1
local held_back = paused or priority <= 0
local yielding, wait = '', -2
local request = redis.call('GET', KEYS[4])
if request then
  local ok, r = pcall(cjson.decode, request)
  local named_other = ok and type(r) == 'table' and (r['from'] == ARGV[3] or (r['to'] ~= '' and r['to'] ~= ARGV[3]))
  held_back = priority <= 0 or named_other
elseif not held_back and redis.call('EXISTS', KEYS[1]) == 0 then
  local best = priority
  local entries = redis.call('HGETALL', KEYS[7])
  for i = 1, #entries, 2 do
    local p, expiry = string.match(entries[i + 1], '^(%d+):(%d+)$')
    if not p or tonumber(expiry) <= now then
      redis.call('HDEL', KEYS[7], entries[i])
    elseif entries[i] ~= ARGV[3] and tonumber(p) > best then
      best, yielding = tonumber(p), entries[i]
    end
  end
  if yielding ~= '' then
    redis.call('SET', KEYS[8], now, 'NX', 'PX', tonumber(ARGV[7]) + tonumber(ARGV[2]))
    wait = tonumber(redis.call('GET', KEYS[8])) + tonumber(ARGV[7]) - now
    if wait > 0 then
      held_back = true
    else
      yielding = ''
    end
  end
end
if not held_back and redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[3], KEYS[4], KEYS[8])
  redis.call('HDEL', KEYS[7], ARGV[3])
  local epoch = redis.call('INCR', KEYS[2])
  if epoch <= tonumber(ARGV[5]) then
    epoch = tonumber(ARGV[5]) + 1
    redis.call('SET', KEYS[2], epoch)
  end
  local before = redis.call('HMGET', KEYS[5], 'value', 'node', 'epoch', 'at', 'reason')
  redis.call('HSET', KEYS[5], 'value', ARGV[1], 'node', ARGV[3], 'epoch', epoch, 'at', now, 'reason', '')
  return {1, epoch, before[1], before[2], before[3], before[4], before[5], now}
end
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[2])
local epoch = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if yielding == '' then
  wait = redis.call('PTTL', KEYS[1])
end
return {0, redis.call('GET', KEYS[1]) or '', epoch, wait, paused and 1 or 0, yielding}
"""

# KEYS[1] lease key, KEYS[2] epoch key, KEYS[3] the last grant; ARGV[1] our value, ARGV[2] lease in ms,
# ARGV[3] our epoch.
# Extends the lease while it holds our value, noting the grant's time (Redis's clock). If the key is
# gone while our last grant should still run, Redis lost it (a restart, a failover, a flush): take it
# again with an epoch above both the stored one and ours. If our grant simply ran out, or the last
# grant was someone else's or released, this is a late or stale renewal: it takes nothing.
# Returns the epoch we hold, or 0 if the lease is not ours.
RENEW = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('HSET', KEYS[3], 'value', ARGV[1], 'at', now)
  return tonumber(ARGV[3])
end
if holder then
  return 0
end
local last = redis.call('HMGET', KEYS[3], 'value', 'at')
local lost = (not last[1]) or (last[1] == ARGV[1] and now - tonumber(last[2]) < tonumber(ARGV[2]))
if not lost then
  return 0
end
local epoch = math.max(tonumber(redis.call('GET', KEYS[2]) or '0') or 0, tonumber(ARGV[3])) + 1
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], epoch)
redis.call('HSET', KEYS[3], 'value', ARGV[1], 'at', now, 'epoch', epoch)
return epoch
"""

# KEYS[1] lease key, KEYS[2] the last grant; ARGV[1] our value, ARGV[2] release channel, ARGV[3] why.
# Deletes the lease only if ours, marks the grant released (so a late renewal cannot take it back)
# with the time and the reason the next winner reads, and wakes the standbys. Returns 1 if released,
# 0 if not ours.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  local t = redis.call('TIME')
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'value', '', 'at', t[1] * 1000 + math.floor(t[2] / 1000), 'reason', ARGV[3])
  redis.call('PUBLISH', ARGV[2], ARGV[1])
  return 1
end
return 0
"""

# KEYS[1] lease key, KEYS[2] record key, KEYS[3] history list; ARGV[1] our value, ARGV[2] record
# JSON, ARGV[3] history length, ARGV[4] the history entry (a JSON object). Publishes the leader's
# record only while the lease is ours, and prepends the entry, with "serving_ms" (now, by Redis's
# clock) added before its closing brace, to the bounded history. Returns 1 if written, 0 if not ours.
WRITE_RECORD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  redis.call('SET', KEYS[2], ARGV[2])
  redis.call('LPUSH', KEYS[3], string.sub(ARGV[4], 1, -2) .. ', "serving_ms": ' .. string.format('%d', now) .. '}')
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
  return 1
end
return 0
"""

# KEYS[1] lease key, KEYS[2] a key the leader keeps; ARGV[1] our value, ARGV[2] the text. Sets it only
# while the lease is ours. Returns 1 if written, 0 if not ours.
WRITE_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

# KEYS: ray-ha's keys of one lease, the last a name it never sets. Returns the type of each key but the
# last, after one harmless write (DEL of that last key): a read-only replica refuses the write, a
# cluster refuses keys in different hash slots, an ACL user without access to them is refused. The
# start check runs it, so none of these refusals first shows mid-campaign.
CHECK = """
local types = {}
for i = 1, #KEYS - 1 do
  types[i] = redis.call('TYPE', KEYS[i])['ok']
end
redis.call('DEL', KEYS[#KEYS])
return types
"""

#: How many leader records the history list keeps.
HISTORY_LENGTH = 50
