"""Budget counters shared by all router replicas: one Lua script call per admission and one per
settlement (a missing counter costs one more, once).

Key layout (prefix default `harness:`):
- `{prefix}bud:{name}:{period start ms|life}`: hash with `spent`, `reserved`, `orphan` and one
  field `r:{reservation id}` -> amount per live reservation; PX = period end + 1 day (lifetime:
  no expiry).
- `{prefix}bud:{name}:{period start ms|life}:x`: sorted set of live reservation ids scored by
  expiry (epoch ms), pushed forward by the owner's renewals; the reserve script drops the
  expired ones and their amounts.
- `{prefix}bud:epoch`: random id written when the first counter is rebuilt; its disappearance
  tells a replica that Redis lost state.
- `{prefix}bud:hold`: present (with PX) while budgets recover from such a loss.
For Redis Cluster put a `{tag}` in the prefix so one request's keys share a slot.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.common.errors import Unavailable

from .core import HOLD, MISSING, OK, OVER, Attempt, BudgetEnforcer, BudgetReservation, Charge
from .local_share import LocalShare

log = logging.getLogger("harness.router.budgets")
CALL_BOUND = 4  # a whole script call may take this many socket timeouts

# KEYS: hold, epoch, then per counter: hash, expiry zset.
# ARGV: now_ms, reservation id, expiry_ms, then per counter: cost, limit, ttl_ms (0 = none).
# Returns {'hold', pttl} | {'missing', epoch, i...} | {'over', epoch, i, spent, reserved} | {'ok', epoch}.
_RESERVE = """
local hold = redis.call('PTTL', KEYS[1])
if hold > 0 then return {'hold', tostring(hold)} end
local epoch = redis.call('GET', KEYS[2]) or ''
local now = tonumber(ARGV[1])
local n = (#KEYS - 2) / 2
local missing = {'missing', epoch}
for i = 1, n do
  if redis.call('HEXISTS', KEYS[1 + 2 * i], 'spent') == 0 then missing[#missing + 1] = tostring(i) end
end
if #missing > 2 then return missing end
for i = 1, n do
  local h, z = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local gone = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  if #gone > 0 then
    local freed = 0
    for _, rid in ipairs(gone) do
      local a = redis.call('HGET', h, 'r:' .. rid)
      if a then
        freed = freed + tonumber(a)
        redis.call('HDEL', h, 'r:' .. rid)
      end
    end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
    if freed ~= 0 then redis.call('HINCRBY', h, 'reserved', -freed) end
  end
  local spent = tonumber(redis.call('HGET', h, 'spent'))
  local reserved = tonumber(redis.call('HGET', h, 'reserved') or '0')
  local cost = tonumber(ARGV[1 + 3 * i])
  local limit = tonumber(ARGV[2 + 3 * i])
  if spent + reserved + cost > limit or spent + reserved >= limit then
    return {'over', epoch, tostring(i), tostring(spent), tostring(reserved)}
  end
end
for i = 1, n do
  local h, z = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local cost = ARGV[1 + 3 * i]
  local ttl = tonumber(ARGV[3 + 3 * i])
  redis.call('HSET', h, 'r:' .. ARGV[2], cost)
  redis.call('HINCRBY', h, 'reserved', cost)
  redis.call('ZADD', z, ARGV[3], ARGV[2])
  if ttl > 0 then
    redis.call('PEXPIRE', h, ttl)
    redis.call('PEXPIRE', z, ttl)
  end
end
return {'ok', epoch}
"""

# KEYS: hold, epoch, then per counter: hash. ARGV: known epoch ('' = none), new epoch, hold_ms,
# then per counter: seed, ttl_ms. Returns {epoch, counters written}.
_SEED = """
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[2], epoch)
  if ARGV[1] ~= '' and tonumber(ARGV[3]) > 0 then
    redis.call('SET', KEYS[1], '1', 'PX', ARGV[3])
  end
end
local n = 0
for i = 3, #KEYS do
  local h = KEYS[i]
  if redis.call('HSETNX', h, 'spent', ARGV[2 + 2 * (i - 2)]) == 1 then
    local orphan = redis.call('HGET', h, 'orphan')
    if orphan then
      redis.call('HINCRBY', h, 'spent', orphan)
      redis.call('HDEL', h, 'orphan')
    end
    local ttl = tonumber(ARGV[3 + 2 * (i - 2)])
    if ttl > 0 then redis.call('PEXPIRE', h, ttl) end
    n = n + 1
  end
end
return {epoch, n}
"""

# KEYS: per (reservation, counter): hash, expiry zset. ARGV: expiry_ms, then per (reservation,
# counter): reservation id, amount, counter ttl_ms (0 = none). Sets each reservation's expiry;
# registers again (amount into `reserved`) one the counter lost. Returns the ids registered again.
_RENEW = """
local again = {}
for i = 1, #KEYS / 2 do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local rid, amount, ttl = ARGV[3 * i - 1], ARGV[3 * i], tonumber(ARGV[3 * i + 1])
  if redis.call('HEXISTS', h, 'r:' .. rid) == 0 then
    redis.call('HSET', h, 'r:' .. rid, amount)
    redis.call('HINCRBY', h, 'reserved', amount)
    if ttl > 0 then redis.call('PEXPIRE', h, ttl) end
    again[#again + 1] = rid
  end
  redis.call('ZADD', z, ARGV[1], rid)
  if ttl > 0 then redis.call('PEXPIRE', z, ttl) end
end
return again
"""

# KEYS: per counter: hash, expiry zset. ARGV: reservation id, actual, then per counter: ttl_ms.
# Returns per counter: spent before, spent after (-1, -1 when the counter was missing).
_SETTLE = """
local out = {}
local actual = tonumber(ARGV[2])
for i = 1, #KEYS / 2 do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local a = redis.call('HGET', h, 'r:' .. ARGV[1])
  if a then
    redis.call('HDEL', h, 'r:' .. ARGV[1])
    redis.call('HINCRBY', h, 'reserved', -tonumber(a))
    redis.call('ZREM', z, ARGV[1])
  end
  local spent = redis.call('HGET', h, 'spent')
  if spent then
    out[#out + 1] = spent
    out[#out + 1] = tostring(redis.call('HINCRBY', h, 'spent', actual))
  else
    redis.call('HINCRBY', h, 'orphan', actual)
    local ttl = tonumber(ARGV[2 + i])
    if ttl > 0 then redis.call('PEXPIRE', h, ttl) end
    out[#out + 1] = '-1'
    out[#out + 1] = '-1'
  end
end
return out
"""


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class RedisBudgets(BudgetEnforcer):
    """Budget counters in Redis. Every call is bounded by `timeout_s`. When Redis does not answer:
    fail closed (UNAVAILABLE) or, with fail_open, enforce this router's local share of each
    budget (local_share.py) until Redis answers again."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "harness:",
        *,
        timeout_s: float = 0.25,
        local_share: float = 0.5,
        **kw,
    ) -> None:
        super().__init__(prefix, **kw)
        self._client = client
        self._owns_client = False
        self._timeout_s = timeout_s
        self._down = False  # the last call failed (cleared by the next that succeeds)
        self._local = LocalShare(
            local_share, timezone=self.tz.key, reservation_ttl_s=self.ttl_ms / 1000, clock_ms=self._clock
        )
        self._local.set_ledger(self._ledger)
        self._reserve_script = client.register_script(_RESERVE)
        self._seed_script = client.register_script(_SEED)
        self._settle_script = client.register_script(_SETTLE)
        self._renew_script = client.register_script(_RENEW)
        self._hold_key = f"{prefix}bud:hold"
        self._epoch_key = f"{prefix}bud:epoch"
        mode = (
            f"open: this router enforces {local_share:.0%} of each budget"
            if self.fail_open
            else "closed: UNAVAILABLE"
        )
        log.info("budgets in Redis; if Redis does not answer within %gs, budgets fail %s", timeout_s, mode)

    @classmethod
    def from_url(cls, url: str, prefix: str = "harness:", *, timeout_s: float = 0.25, **kw) -> RedisBudgets:
        client = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        b = cls(client, prefix, timeout_s=timeout_s, **kw)
        b._owns_client = True
        return b

    @property
    def degraded(self) -> bool:
        return self._down

    @property
    def local_reservations(self) -> int:
        return self._local.reservations

    def update(self, rules=None, prices=None) -> None:
        super().update(rules, prices)
        self._local.update(rules, prices)

    def set_ledger(self, ledger) -> None:
        super().set_ledger(ledger)
        self._local.set_ledger(ledger)

    async def _call(self, script, keys: list[str], args: list) -> Any:
        """One script call, bounded; a failure is Unavailable (every call tries Redis again, so
        an outage costs each request at most `timeout_s`)."""
        try:
            # Each socket operation is bounded by timeout_s (the client's socket timeouts); the
            # whole call (a new connection's handshake, EVALSHA then EVAL) by a few of them.
            async with asyncio.timeout(self._timeout_s * CALL_BOUND):
                result = await script(keys=keys, args=args)
        except (RedisError, TimeoutError) as e:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Cancelled as the bound expired: asyncio.timeout may report it as TimeoutError,
                # and the renewal loop would then retry forever instead of stopping.
                raise asyncio.CancelledError from e
            why = str(e) or type(e).__name__
            if not self._down:
                how = (
                    f"enforcing this router's local share ({self._local.share:.0%})"
                    if self.fail_open
                    else "refusing budgeted requests"
                )
                log.error("budget store unavailable (%s): %s until it answers", why, how)
            self._down = True
            raise Unavailable(f"budget store unavailable: {why}") from e
        if self._down:
            log.warning("budget store reachable again: budgets are shared again")
            self._down = False
        return result

    async def _reserve_unavailable(self, rules, cost, charges) -> BudgetReservation:
        res = await self._local.reserve_cost(rules, cost)
        res.shared = charges
        return res

    async def _settle_local(self, res: BudgetReservation, actual: int) -> None:
        await self._local.settle(res, actual)
        if not res.shared:
            return
        try:  # the spend also goes into the shared counters, once Redis answers
            await self._call(self._settle_script, [k for c in res.shared for k in (c.key, f"{c.key}:x")],
                             [res.id, actual] + [c.ttl_ms for c in res.shared])  # fmt: skip
        except Unavailable:
            log.warning("spend of %d micro-USD made on the local share is not in the shared counters (the "
                        "ledger has it; counters rebuilt from the ledger include it)", actual)  # fmt: skip

    def start(self) -> None:
        super().start()
        self._local.start()

    async def _reserve(self, charges: tuple[Charge, ...], rid: str, expiry_ms: int, now: float) -> Attempt:
        keys = [self._hold_key, self._epoch_key]
        args: list[str | int] = [repr(now), rid, expiry_ms]
        for c in charges:
            keys += [c.key, f"{c.key}:x"]
            args += [c.cost, c.rule.limit_micro_usd, c.ttl_ms]
        r = [_s(v) for v in await self._call(self._reserve_script, keys, args)]
        status = r[0]
        if status == HOLD:
            return Attempt(HOLD, retry_ms=int(float(r[1])))
        epoch = r[1]
        if epoch != self.epoch and self.epoch and epoch:
            log.warning("budget store epoch changed (%s -> %s): Redis lost state", self.epoch, epoch)
        if status == MISSING:
            return Attempt(MISSING, missing=tuple(int(i) - 1 for i in r[2:]), epoch=epoch)
        if status == OVER:
            return Attempt(OVER, index=int(r[2]) - 1, spent=int(r[3]), reserved=int(r[4]), epoch=epoch)
        return Attempt(OK, epoch=epoch)

    async def _seed(self, charges: list[Charge], seeds: list[int], now: float) -> tuple[int, str]:
        keys = [self._hold_key, self._epoch_key] + [c.key for c in charges]
        args: list[str | int] = [self.epoch, uuid.uuid4().hex, self.hold_ms]
        for c, s in zip(charges, seeds, strict=True):
            args += [s, c.ttl_ms]
        epoch, n = await self._call(self._seed_script, keys, args)
        return int(n), _s(epoch)

    async def _settle(self, charges: tuple[Charge, ...], rid: str, actual: int) -> list[tuple[int, int]]:
        keys: list[str] = []
        for c in charges:
            keys += [c.key, f"{c.key}:x"]
        r = await self._call(self._settle_script, keys, [rid, actual] + [c.ttl_ms for c in charges])
        vals = [int(_s(v)) for v in r]
        return [(vals[2 * i], vals[2 * i + 1]) for i in range(len(charges))]

    async def _renew(self, held, expiry_ms) -> set[str]:
        keys: list[str] = []
        args: list[str | int] = [expiry_ms]
        for res in held:
            for c in res.charges:
                keys += [c.key, f"{c.key}:x"]
                args += [res.id, c.cost, c.ttl_ms]
        return {_s(v) for v in await self._call(self._renew_script, keys, args)}

    async def _close(self) -> None:
        await self._local.aclose()
        if self._owns_client:
            await self._client.aclose()
