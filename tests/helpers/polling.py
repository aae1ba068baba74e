"""Waiting in tests for something another task or process does: poll a condition until it
holds, and fail the test with what was last seen once its time is up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def until(predicate: Callable[[], object], timeout_s: float = 20.0, interval_s: float = 0.02) -> float:
    """Seconds until ``predicate()`` holds; fails after ``timeout_s``."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, f"condition not met within {timeout_s} s"
        await asyncio.sleep(interval_s)
    return time.monotonic() - started


async def eventually(
    predicate: Callable[[], Awaitable[object]], within_s: float = 10.0, interval_s: float = 0.02
) -> float:
    """Seconds until ``await predicate()`` holds; fails after ``within_s``."""
    started = time.monotonic()
    while not await predicate():
        assert time.monotonic() - started < within_s, f"not true within {within_s} s"
        await asyncio.sleep(interval_s)
    return time.monotonic() - started


async def wait_for(fetch, predicate, timeout: float = 20.0):
    """The first ``await fetch()`` that ``predicate`` accepts; fails after ``timeout`` with the last."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if predicate(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {value}")
        await asyncio.sleep(0.05)
