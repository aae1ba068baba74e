"""Rate limits shared by all router replicas: one Lua script call per admission.

Key layout: `{prefix}rl:{agent|user}:{name}:{rpm|tpm}` -> GCRA tat in epoch milliseconds
(string, 3 decimals), with PX set to when the cell is full again, so idle keys vanish. Time
comes from the Redis server (`TIME`) so replicas with skewed clocks agree; tests may inject a
clock. The keys of one request are not hash-tagged: for Redis Cluster, put a `{tag}` in the
prefix (all limits then live on one shard).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.common.errors import ResourceExhausted, Unavailable

from .limits import PERIOD_MS, Cell, MemoryRateLimiter, RateLimiter

log = logging.getLogger("harness.router.flow")

# ARGV: now_ms ('' = server TIME), period_ms, then per key: interval_ms, cost.
# Returns {0, 0} when admitted (all cells charged) or {i, retry_ms} for the 1-based key with the
# longest wait (nothing charged). Same steps as limits.gcra_check.
_ADMIT = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local period = tonumber(ARGV[2])
local slack = period * 1e-6  -- limits.ROUNDING_SLACK_MS
local new = {}
local worst, worst_retry = 0, 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[1 + 2 * i])
  local cost = tonumber(ARGV[2 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local nt = tat + cost * interval
  local over = nt - now - period
  if over > slack and over > worst_retry then
    worst = i
    worst_retry = over
  end
  new[i] = nt
end
if worst > 0 then
  return {worst, tostring(worst_retry)}
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.3f', new[i]), 'PX', math.ceil(new[i] - now) + 1)
end
return {0, '0'}
"""

# ARGV: now_ms ('' = server TIME), then per key: interval_ms, delta units. Same as gcra_adjust.
_ADJUST = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i])
  local delta = tonumber(ARGV[1 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local nt = tat + delta * interval
  if nt <= now then
    redis.call('DEL', KEYS[i])
  else
    redis.call('SET', KEYS[i], string.format('%.3f', nt), 'PX', math.ceil(nt - now) + 1)
  end
end
return 0
"""


class RedisRateLimiter(RateLimiter):
    """GCRA cells in Redis, every call bounded. When Redis does not answer: `fail_open` enforces
    this router's `local_share` of each limit in memory (so an outage cannot lift the limits);
    with fail_open=False the request gets UNAVAILABLE."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "harness:",
        *,
        fail_open: bool = True,
        local_share: float = 1.0,
        timeout_s: float = 0.25,
        clock_ms: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(prefix)
        if not 0 < local_share <= 1:
            raise ValueError("the local rate-limit share must be in (0, 1]")
        self._client = client
        self._fail_open = fail_open
        self._share = local_share
        self._local = MemoryRateLimiter(prefix)
        self._bound_s = timeout_s * 4  # a whole call: a new connection's handshake, EVALSHA then EVAL
        self._clock = clock_ms
        self.degraded = False  # the last call to Redis failed (local shares in force)
        self._owns_client = False  # a client passed in belongs to the caller
        # register_script: EVALSHA, falling back to EVAL once after a NOSCRIPT (e.g. restart).
        self._admit_script = client.register_script(_ADMIT)
        self._adjust_script = client.register_script(_ADJUST)

    @classmethod
    def from_url(
        cls, url: str, prefix: str = "harness:", *, timeout_s: float = 0.25, **kw
    ) -> RedisRateLimiter:
        # A short socket timeout bounds what a sick Redis can add to the hot path.
        client = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        limiter = cls(client, prefix, timeout_s=timeout_s, **kw)
        limiter._owns_client = True
        return limiter

    async def admit(self, agent: str, user: str, limits, tokens: int):
        try:
            return await super().admit(agent, user, limits, tokens)
        except ResourceExhausted as exc:
            if not self.degraded:
                raise
            raise ResourceExhausted(
                f"the shared rate-limit store is unreachable, so this router enforces its share "
                f"({self._share:.0%}) of each limit: {exc.message}",
                retry_after_ms=int(exc.trailers.get("retry-after-ms", "1")),
            ) from None

    def _now(self) -> str:
        return "" if self._clock is None else repr(self._clock())

    async def _admit(self, cells: tuple[Cell, ...]) -> tuple[int, float]:
        args: list[str | float | int] = [self._now(), PERIOD_MS]
        for c in cells:
            args += [repr(c.interval_ms), c.cost]
        try:
            async with asyncio.timeout(self._bound_s):
                idx, retry = await self._admit_script(keys=[c.key for c in cells], args=args)
        except (RedisError, TimeoutError) as e:
            self._failed("admit", e)
            return await self._local._admit(self._shares(cells))
        self.degraded = False
        return int(idx) - 1, float(retry)

    async def _adjust(self, deltas: list[tuple[Cell, int]]) -> None:
        args: list[str | float | int] = [self._now()]
        for c, d in deltas:
            args += [repr(c.interval_ms), d]
        try:
            async with asyncio.timeout(self._bound_s):
                await self._adjust_script(keys=[c.key for c, _ in deltas], args=args)
        except (RedisError, TimeoutError) as e:
            self._failed("settle", e)
            await self._local._adjust(
                [(s, d) for s, (_, d) in zip(self._shares([c for c, _ in deltas]), deltas, strict=True)]
            )

    def _shares(self, cells) -> tuple[Cell, ...]:
        return tuple(replace(c, limit=max(1, int(c.limit * self._share))) for c in cells)

    def _failed(self, what: str, e: Exception) -> None:
        why = str(e) or type(e).__name__
        self.degraded = True
        if not self._fail_open:
            raise Unavailable(f"rate limiter store unavailable: {why}") from e
        log.warning("rate limit %s: Redis unavailable (%s); enforcing this router's share (%.0f%%) locally",
                    what, why, self._share * 100)  # fmt: skip

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
