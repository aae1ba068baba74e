"""A small async cache with a time-to-live: the registry mirror's lookups and the router's
views use it for what the watch streams do not carry (API keys, access decisions)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Caches loader results per key for `ttl_s`; concurrent misses on one key share one load."""

    def __init__(self, ttl_s: float, loader: Callable[[K], Awaitable[V]], max_entries: int = 10_000) -> None:
        self._ttl = ttl_s
        self._loader = loader
        self._max = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._inflight: dict[K, asyncio.Future[V]] = {}

    async def get(self, key: K) -> V:
        hit = self._entries.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await self._loader(key)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._inflight.pop(key, None)
        if len(self._entries) >= self._max:
            self._entries.clear()  # crude bound; entries are cheap to reload
        self._entries[key] = (now + self._ttl, value)
        future.set_result(value)
        return value

    def invalidate(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
