import { LOG_MAX_AGE_MS } from './change-log.js';

/**
 * Lua scripts. Every change to a tenant's memberships or presence is applied and appended to the tenant's
 * change log in one script, so a resolver that has read the log up to entry N holds exactly the state
 * after change N: there is no window where a change is applied but not yet visible in the log.
 *
 * Log entry fields: s = sequence number, o = op, a/b/c = operands:
 *   tu  a=team  b=bit c=1|0    user ↔ team (direct membership)
 *   gu  a=group b=bit c=1|0    user ↔ group
 *   gt  a=group b=team c=1|0   group holds team
 *   on  a=node  b=bit c=userId user online on a node
 *   off a=node  b=bit          user offline on a node
 *   nd  a=node                 node gone: forget everything it held
 *   rl                         memberships changed in bulk: drop membership caches
 *   rl  a=teams b=groups c=p   the same, for these teams and groups only (comma-separated)
 */

const APPEND = `
-- Called before a script writes anything, it fails the script while the log could not take an entry: Redis
-- keeps what a script wrote before it failed, and a change applied but not logged would never reach
-- resolvers' caches (a member removed, yet still served).
local function requireType(what, key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= want and t ~= 'none' then
    error(redis.error_reply(
      'WRONGTYPE ' .. what .. ' ' .. key .. ' is a ' .. t .. ', not a ' .. want .. ': nothing applied'))
  end
end
local function requireLog(logKey, seqKey)
  requireType('the change log', logKey, 'stream')
  requireType('the change log counter', seqKey, 'string')
end
-- A log keeps at most maxlen entries and none older than LOG_MAX_AGE_MS, and goes altogether once nothing
-- was appended for that long: an idle tenant would otherwise keep up to maxlen entries (about 6 MB) for
-- good. A reader that finds entries gone reloads the tenant (the counter, kept, tells it). Trimmed by age
-- and given its lifetime once per script, at its first entry: a script appending one entry per user or
-- change would otherwise do it for each.
local aged = false
local function append(logKey, seqKey, maxlen, ...)
  local s = redis.call('INCR', seqKey)
  redis.call('XADD', logKey, 'MAXLEN', '~', maxlen, '*', 's', s, ...)
  if aged then return end
  aged = true
  local t = redis.call('TIME')
  redis.call('XTRIM', logKey, 'MINID', '~', tonumber(t[1]) * 1000 - ${LOG_MAX_AGE_MS})
  redis.call('PEXPIRE', logKey, ${LOG_MAX_AGE_MS})
end
local function bitOf(ids, rids, idseq, user, create)
  local bit = redis.call('HGET', ids, user)
  if bit then return tonumber(bit) end
  if not create then return nil end
  local lost = redis.call('EXISTS', idseq) == 0
  bit = redis.call('INCR', idseq) - 1
  -- The counter lost (evicted, or restored from an older copy) while the maps list users, or behind them
  -- (a bit under the count of users listed, or one the reverse map lists): handing out a bit in use would
  -- give this user the memberships of the one holding it. Moved past every bit either map lists, whatever
  -- gaps earlier losses left (one pass over the maps, only on this path); the reverse map may be lost too.
  local listed = redis.call('HLEN', ids)
  if (lost and listed > 0) or bit < listed or redis.call('HEXISTS', rids, bit) == 1 then
    local top = -1
    for _, value in ipairs(redis.call('HVALS', ids)) do top = math.max(top, tonumber(value) or -1) end
    for _, value in ipairs(redis.call('HKEYS', rids)) do top = math.max(top, tonumber(value) or -1) end
    bit = top + 1
    redis.call('SET', idseq, bit + 1)
  end
  redis.call('HSET', ids, user, bit)
  redis.call('HSET', rids, bit, user)
  return bit
end
`;

/** At most this many teams and groups are named by a reload entry; past it, the entry reloads everything. */
export const RELOAD_NAMED = 64;

/**
 * Applies membership changes of one tenant.
 * KEYS: ids, rids, idseq, log, logseq, term
 * ARGV: tag ("{prefix:tenant}"), maxlen, mode ("each" = one log entry per change, "bulk" = one `rl` entry),
 *       term (the caller's membership-queue term, or "" when not applying from the queue),
 *       notAfter (ms on Redis's clock past which nothing is applied: the caller has given up; or ""),
 *       then per change: kind (tu|gu|gt), op (1 add, 0 remove), a, b
 * Target keys are derived from the tag: they share the tenant's slot, so this stays cluster-safe.
 * Returns how many changes altered state, -1 (nothing applied) when the term is not the current one, or -2
 * (nothing applied) when it arrived after notAfter.
 */
export const APPLY_MEMBERSHIP = `${APPEND}
local RELOAD_NAMED = ${RELOAD_NAMED}
local tag, maxlen, mode, term, notAfter = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if term ~= '' and tonumber(redis.call('GET', KEYS[6]) or '0') ~= tonumber(term) then return -1 end
if notAfter ~= '' then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(notAfter) then return -2 end
end
requireLog(KEYS[4], KEYS[5])
local changed = 0
-- The teams and groups a bulk entry (or a failure) must make resolvers reload: a team's direct members and
-- the groups holding it, a group's members.
local teams, groups, touched = {}, {}, 0
local function touch(list, id)
  if not list[id] then
    list[id] = true
    touched = touched + 1
  end
end
local function applyAt(i)
  local kind, op, a, b = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local v = tonumber(op)
  -- Each touched before writing: a change that fails half-way has written something too.
  if kind == 'gt' then
    touch(teams, b)
    -- Either side counts: one left behind by a change that failed half-way is a change when it is mended.
    local n
    if v == 1 then
      n = redis.call('SADD', tag .. ':gt:' .. a, b) + redis.call('SADD', tag .. ':tg:' .. b, a)
    else
      n = redis.call('SREM', tag .. ':gt:' .. a, b) + redis.call('SREM', tag .. ':tg:' .. b, a)
    end
    if n > 0 then
      changed = changed + 1
      if mode == 'each' then append(KEYS[4], KEYS[5], maxlen, 'o', 'gt', 'a', a, 'b', b, 'c', v) end
    end
  else
    touch(kind == 'tu' and teams or groups, a)
    local bit = bitOf(KEYS[1], KEYS[2], KEYS[3], b, v == 1)
    if bit then
      local target = tag .. ':' .. kind .. ':' .. a
      local old = redis.call('SETBIT', target, bit, v)
      if old ~= v then
        changed = changed + 1
        if mode == 'each' then append(KEYS[4], KEYS[5], maxlen, 'o', kind, 'a', a, 'b', bit, 'c', v) end
      end
    end
  end
end
-- Redis keeps what a script wrote before it failed: a change refused by Redis (a key of the wrong type)
-- ends the batch, and a bulk entry is logged for whatever was written before it (also half a 'gt'), or a
-- resolver would go on serving memberships older than Redis holds.
local failed
for i = 6, #ARGV, 4 do
  local ok, err = pcall(applyAt, i)
  if not ok then
    failed = err
    break
  end
end
if failed or (mode == 'bulk' and changed > 0) then
  -- Naming what to reload (c = 'p', partial) when that is short: resolvers keep the rest of their cache, and
  -- a tenant's events to other teams resolve undisturbed while an import runs. Longer: reload everything.
  if touched <= RELOAD_NAMED then
    local t, g = {}, {}
    for id in pairs(teams) do t[#t + 1] = id end
    for id in pairs(groups) do g[#g + 1] = id end
    append(KEYS[4], KEYS[5], maxlen, 'o', 'rl', 'a', table.concat(t, ','), 'b', table.concat(g, ','), 'c', 'p')
  else
    append(KEYS[4], KEYS[5], maxlen, 'o', 'rl')
  end
end
if failed then
  -- A Redis refusal keeps its code (WRONGTYPE…); a Lua error gets ERR, which callers take as permanent.
  return redis.error_reply(type(failed) == 'table' and failed.err or ('ERR ' .. tostring(failed)))
end
return changed
`;

/**
 * Assigns (or looks up) bit positions for external user ids.
 * KEYS: ids, rids, idseq   ARGV: user ids   Returns the bit positions, in order.
 */
export const ASSIGN_IDS = `${APPEND}
local out = {}
for i = 1, #ARGV do out[i] = bitOf(KEYS[1], KEYS[2], KEYS[3], ARGV[i], true) end
return out
`;

/**
 * Marks users online on a node.
 * KEYS: ids, rids, idseq, online(node), log, logseq   ARGV: node, maxlen, user ids...
 * Returns the users' bit positions.
 */
export const PRESENCE_ON = `${APPEND}
requireLog(KEYS[5], KEYS[6])
local node, maxlen = ARGV[1], ARGV[2]
local out = {}
for i = 3, #ARGV do
  local user = ARGV[i]
  local bit = bitOf(KEYS[1], KEYS[2], KEYS[3], user, true)
  redis.call('SETBIT', KEYS[4], bit, 1)
  append(KEYS[5], KEYS[6], maxlen, 'o', 'on', 'a', node, 'b', bit, 'c', user)
  out[#out + 1] = bit
end
return out
`;

/**
 * Marks a user offline on a node.
 * KEYS: online(node), log, logseq   ARGV: node, maxlen, bit
 */
export const PRESENCE_OFF = `${APPEND}
requireLog(KEYS[2], KEYS[3])
-- No bitmap (the node forgotten, by its drain or a sweep): the bit is clear already. SETBIT would make a
-- zeroed one of bit/8 bytes, with no lifetime, which nothing removes once the node id is gone for good.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local old = redis.call('SETBIT', KEYS[1], ARGV[3], 0)
if old == 1 then append(KEYS[2], KEYS[3], ARGV[2], 'o', 'off', 'a', ARGV[1], 'b', ARGV[3]) end
return old
`;

/**
 * Forgets a node's users in one tenant (the node stopped, or died).
 * KEYS: online(node), log, logseq   ARGV: node, maxlen
 */
export const PRESENCE_NODE_GONE = `${APPEND}
requireLog(KEYS[2], KEYS[3])
redis.call('DEL', KEYS[1])
append(KEYS[2], KEYS[3], ARGV[2], 'o', 'nd', 'a', ARGV[1])
return 1
`;

/**
 * Node heartbeat on Redis's clock (nodes' clocks may disagree).
 * KEYS: nodes   ARGV: node   Returns -1 when the node was not listed (first beat, or it had been declared
 * dead and cleaned up: the caller must then re-announce its users), else the ms since its previous beat
 * landed, which is what resolvers judged its liveness by.
 */
export const NODE_HEARTBEAT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local previous = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
if not previous then return -1 end
-- Never negative (a clock stepped back, a failover to a Redis whose clock is behind): -1 means "not listed".
return math.max(0, now - tonumber(previous))
`;

/**
 * Nodes whose last heartbeat is older than ARGV[1] ms, on Redis's clock. KEYS: nodes
 */
export const DEAD_NODES = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
`;

/**
 * Whether node ARGV[2] is listed and has been silent for longer than ARGV[1] ms (1) or not (0): checked
 * again right before a node is cleaned up, as it may have beaten since the list was read. KEYS: nodes
 */
export const NODE_DEAD = `
local score = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not score then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(score) <= now - tonumber(ARGV[1]) then return 1 end
return 0
`;

/**
 * Nodes alive within ARGV[1] ms. KEYS: nodes
 */
export const LIVE_NODES = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
`;

/**
 * Records a revocation: KEYS: revoked; ARGV: lifetime in s, the instant (epoch ms) or '' for Redis's
 * clock. Returns the instant in force (-1: every token, see below) and its lifetime in ms (-1: none). A
 * revocation never moves an earlier-stored one back nor shortens its lifetime: two operators revoking at
 * once, or a write resent after a reconnect landing after a later one, would otherwise accept again tokens
 * the later one refused. One script, so the clock is read where the write lands. A stored value that is
 * not a whole number of ms Warren could have written (up to 15 digits) is one the readers take as revoking
 * every token: it is kept as it is, its lifetime extended the same way.
 */
export const REVOKE = `
local at = tonumber(ARGV[2])
if not at then
  local t = redis.call('TIME')
  at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local raw = redis.call('GET', KEYS[1])
local foreign = raw and not (string.match(raw, '^%d+$') and #raw <= 15)
if raw and not foreign and tonumber(raw) > at then at = tonumber(raw) end
local ms = tonumber(ARGV[1]) * 1000
local left = redis.call('PTTL', KEYS[1])
if left == -1 then
  ms = -1
else
  ms = math.max(ms, left)
end
if foreign then
  if ms ~= -1 then redis.call('PEXPIRE', KEYS[1], ms) end
  return {-1, ms}
end
if ms == -1 then
  redis.call('SET', KEYS[1], at, 'KEEPTTL')
else
  redis.call('SET', KEYS[1], at, 'PX', ms)
end
return {at, ms}
`;
