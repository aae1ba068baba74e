"""Exact-result cache for deterministic requests, and coalescing of identical in-flight ones.

A request is deterministic when it is greedy (temperature 0) or pins a sampling seed: the
engine then returns the same text for the same model, parameters and prompt. Keys come from
CacheKeys: a keyed hash (HMAC with the router's secret) that always covers the calling agent
and user, so nothing one caller cached is served to another, and a key reveals nothing of the
values it covers. Entries expire after a TTL. Redis holds them when configured (shared by
every router replica); otherwise an in-process LRU does.

Coalescing: while one request for a key is being generated, identical requests wait for its
result instead of dispatching again (only within one router; across replicas the cache
catches the next ones).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

log = logging.getLogger("harness.router.cache")


@dataclass(frozen=True)
class CachedResult:
    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: str
    deployment: str  # which deployment produced it (reported, not re-dispatched)
    binding: str = ""  # what an idempotency key was first used for (a CacheKeys digest)


def is_deterministic(temperature: float, seed: int | None) -> bool:
    return temperature == 0 or seed is not None


class CacheKeys:
    """Cache keys as HMAC-SHA256 over canonical JSON of their parts.

    Keyed with the router's secret (the redaction key, the same on every replica), a key can
    cover raw values (tool arguments) without a dictionary attack on Redis revealing them.
    Without a secret each process draws its own: entries are then not shared across replicas.
    """

    def __init__(self, secret: str | bytes = "") -> None:
        self.shared = bool(secret)
        self._secret = (secret.encode() if isinstance(secret, str) else secret) or os.urandom(32)

    def key(self, namespace: str, *parts: Any) -> str:
        material = json.dumps([namespace, *parts], separators=(",", ":"), sort_keys=True)
        return hmac.new(self._secret, material.encode(), hashlib.sha256).hexdigest()

    def generation(
        self, agent: str, user: str, model: str, params: Mapping[str, Any], redacted_prompt: str
    ) -> str:
        """A deterministic generation, scoped to the calling agent and user."""
        return self.key("generate", agent, user, model, dict(params), redacted_prompt)


class ResultCache(Protocol):
    async def get(self, key: str) -> CachedResult | None: ...

    async def put(self, key: str, value: CachedResult, ttl_s: float) -> None: ...

    async def add(self, key: str, value: CachedResult, ttl_s: float) -> bool:
        """Stores `value` only if `key` holds nothing (atomically); True when it did."""
        ...

    async def delete(self, key: str) -> None: ...


class MemoryResultCache:
    """LRU with per-entry expiry, bounded by entry count."""

    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, CachedResult]] = OrderedDict()

    async def get(self, key: str) -> CachedResult | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        if hit[0] <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return hit[1]

    async def put(self, key: str, value: CachedResult, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        self._entries[key] = (self._clock() + ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def add(self, key: str, value: CachedResult, ttl_s: float) -> bool:
        if await self.get(key) is not None:
            return False
        await self.put(key, value, ttl_s)
        return True

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)


class RedisResultCache:
    """Entries as JSON strings with Redis expiry. A Redis fault is a miss, never an error: the
    cache is an optimisation and must not fail requests."""

    def __init__(self, client: Any, prefix: str = "harness:", timeout_s: float = 0.05) -> None:
        self._redis = client
        self._prefix = f"{prefix}rc:"
        self._timeout = timeout_s

    @classmethod
    def from_url(cls, url: str, prefix: str = "harness:", socket_timeout_s: float = 0.25) -> RedisResultCache:
        import redis.asyncio as redis

        client = redis.from_url(url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s)
        return cls(client, prefix)

    async def get(self, key: str) -> CachedResult | None:
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._redis.get(self._prefix + key)
        except Exception as exc:  # ConnectionError, TimeoutError, ...: a miss
            log.warning("result cache read failed (%s); treating as a miss", type(exc).__name__)
            return None
        try:
            return CachedResult(**json.loads(raw)) if raw else None
        except (ValueError, TypeError):  # an entry of another shape (another release): a miss
            log.warning("result cache entry unreadable; treating as a miss")
            return None

    async def put(self, key: str, value: CachedResult, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.set(self._prefix + key, json.dumps(asdict(value)), px=int(ttl_s * 1000))
        except Exception as exc:
            log.warning("result cache write failed (%s); not cached", type(exc).__name__)

    async def add(self, key: str, value: CachedResult, ttl_s: float) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                done = await self._redis.set(
                    self._prefix + key, json.dumps(asdict(value)), px=max(1, int(ttl_s * 1000)), nx=True
                )
        except Exception as exc:  # as without a cache: the caller goes ahead
            log.warning("result cache claim failed (%s); going ahead", type(exc).__name__)
            return True
        return bool(done)

    async def delete(self, key: str) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.delete(self._prefix + key)
        except Exception as exc:  # the entry expires on its own
            log.warning("result cache delete failed (%s)", type(exc).__name__)

    async def aclose(self) -> None:
        await self._redis.aclose()


class Coalescer:
    """Runs one producer per key at a time; concurrent callers of the same key share its result.

    If the leading call fails, followers get the same exception (they asked for the same
    thing); if the leader is cancelled (its client went away), one follower takes over.
    """

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[CachedResult]] = {}
        self.coalesced_total = 0

    async def follow(self, key: str) -> CachedResult | None:
        """The result of an identical call in flight, or None when the caller must lead (then
        it calls `lead` before its next await, and `done` when it has the result)."""
        while (pending := self._inflight.get(key)) is not None:
            try:
                result = await asyncio.shield(pending)
            except asyncio.CancelledError:
                if pending.cancelled():  # the leader went away: try to lead
                    continue
                raise
            self.coalesced_total += 1
            return result
        return None

    def lead(self, key: str) -> asyncio.Future[CachedResult]:
        future: asyncio.Future[CachedResult] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        return future

    def done(self, key: str, future: asyncio.Future, result: CachedResult | BaseException) -> None:
        """Ends a lead: followers get `result`, or the exception (a cancellation hands over)."""
        if self._inflight.get(key) is future:
            del self._inflight[key]
        if isinstance(result, asyncio.CancelledError):
            future.cancel()
        elif isinstance(result, BaseException):
            future.set_exception(result)
            future.exception()  # retrieved: followers re-raise it themselves
        else:
            future.set_result(result)

    async def run(
        self, key: str, produce: Callable[[], Awaitable[CachedResult]]
    ) -> tuple[CachedResult, bool]:
        """(result, True if it came from another caller's call)."""
        shared = await self.follow(key)
        if shared is not None:
            return shared, True
        future = self.lead(key)
        try:
            result = await produce()
        except BaseException as exc:
            self.done(key, future, exc)
            raise
        self.done(key, future, result)
        return result, False
