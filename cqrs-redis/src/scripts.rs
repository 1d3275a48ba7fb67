//! The Lua scripts that make leases, fenced acknowledgements and trimming atomic on the
//! server. Time is the server's (`TIME`), so members' clocks never matter.

use std::sync::LazyLock;

use redis::Script;

/// Takes a partition's lease: free, or held by an earlier holding of this same member.
/// KEYS: lease. ARGV: token (`<member>#<epoch>`), `<member>#`, lease in ms. Returns 1 if taken.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[2]) ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
",
    )
});

/// Renews leases still held by their tokens. KEYS: leases. ARGV: lease in ms, then one token
/// per key. Returns 1 or 0 per key.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
",
    )
});

/// Gives a lease up if this token still holds it. KEYS: lease. ARGV: token.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// Acknowledges entries only while the token holds the partition's lease: the fence that
/// keeps a member whose lease moved from acknowledging. KEYS: lease, stream. ARGV: token,
/// group, entry ids. Returns the number acknowledged, or -1 when fenced off.
pub(crate) static ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
return redis.call('XACK', KEYS[2], ARGV[2], unpack(ARGV, 3))
",
    )
});

/// Keeps a member in its group's roster (scored by when it expires), drops the expired, and
/// counts the live. KEYS: roster. ARGV: member, lease in ms.
pub(crate) static ROSTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return redis.call('ZCARD', KEYS[1])
",
    )
});

/// Trims a stream to the oldest entry some group still needs: its oldest pending entry, else
/// its last delivered one. A stream without groups is left alone. KEYS: stream. Returns the
/// number of entries removed.
pub(crate) static TRIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local function parse(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local function older(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local keep = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local need = info['last-delivered-id']
  if tonumber(info['pending']) > 0 then
    need = redis.call('XPENDING', KEYS[1], info['name'])[2]
  end
  if keep == nil or older(need, keep) then keep = need end
end
if keep == nil or keep == '0-0' then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', keep)
",
    )
});

/// Removes a group from a stream, if the stream is there. KEYS: stream. ARGV: group.
pub(crate) static DESTROY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('XGROUP', 'DESTROY', KEYS[1], ARGV[1])
",
    )
});
