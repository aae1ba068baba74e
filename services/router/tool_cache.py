"""The tool result cache and idempotency keys, scoped so nothing crosses agents or users.

A cached read is keyed on (tool, version, action, agent, user, keyed hash of the *raw*
arguments): two callers, or two different values that redact alike, never share an entry.
An idempotency key belongs to one (agent, user) and is bound to the call it was first used
for: reusing it for another tool, action or arguments is refused, not answered with the
first result. The first call claims the key atomically (Redis SET NX) before it runs, so a
duplicate sent while it runs waits for its result instead of running the action again. Entries hold results already redacted per the writer's policy, and are redacted
again with the reader's policy before they are served (the agent's policy may have changed).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.router.result_cache import CachedResult, CacheKeys, ResultCache

IDEMPOTENCY_TTL_S = 24 * 3600.0
MAX_IDEMPOTENCY_KEY_CHARS = 256
RUNNING = "running"  # an idempotency entry whose first call has not finished
CLAIM_MARGIN_S = 30.0  # a claim outlives the call's longest wait by this much (a dead router's frees)


@dataclass(frozen=True)
class ToolScope:
    """One call's cache identity: the read-cache key, the idempotency entry and its binding."""

    result_key: str
    idempotency_key: str  # "" when the call carries none
    binding: str  # tool, version, action and raw arguments, as one keyed hash
    label: str  # the caller's idempotency key as given (for messages)


class ToolResults:
    def __init__(
        self,
        cache: ResultCache,
        keys: CacheKeys,
        idempotency_ttl_s: float = IDEMPOTENCY_TTL_S,
        poll_s: float = 0.1,
    ):
        self.cache = cache
        self.keys = keys
        self.idempotency_ttl_s = idempotency_ttl_s
        self.poll_s = poll_s

    def scope(
        self, agent: str, user: str, tool: str, version: str, action: str, arguments: Any, idem: str
    ) -> ToolScope:
        if len(idem) > MAX_IDEMPOTENCY_KEY_CHARS:
            raise InvalidArgument(
                f"idempotency_key is {len(idem)} characters; the limit is {MAX_IDEMPOTENCY_KEY_CHARS}"
            )
        binding = self.keys.key("tool-call", tool, version, action, arguments)
        return ToolScope(
            result_key=self.keys.key("tool-result", agent, user, binding),
            idempotency_key=self.keys.key("tool-idempotency", agent, user, idem) if idem else "",
            binding=binding,
            label=idem,
        )

    async def lookup(self, scope: ToolScope, cacheable: bool, wait_s: float) -> dict[str, Any] | None:
        """The result to answer with (as stored: redact it for the reader), or None: then this
        call holds its idempotency key and must `store` its result or `release` the key."""
        if scope.idempotency_key and (first := await self._first_use(scope, wait_s)) is not None:
            return first
        if cacheable and (hit := await self.cache.get(scope.result_key)) is not None:
            return json.loads(hit.text)
        return None

    async def _first_use(self, scope: ToolScope, wait_s: float) -> dict[str, Any] | None:
        """The result of the key's first call, waiting while it runs; None once this call holds
        the key (claimed atomically, so two concurrent duplicates never both run)."""
        deadline = time.monotonic() + wait_s
        running = CachedResult("", 0, 0, RUNNING, "", scope.binding)
        while True:
            first = await self.cache.get(scope.idempotency_key)
            if first is None:
                if await self.cache.add(scope.idempotency_key, running, wait_s + CLAIM_MARGIN_S):
                    return None
                continue  # another call claimed it in between: look again
            if first.binding != scope.binding:
                raise FailedPrecondition(
                    f"idempotency key {scope.label!r} was first used for another tool, action or "
                    "arguments; use a new key for a different call"
                )
            if first.finish_reason != RUNNING:
                return json.loads(first.text)
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"the call with idempotency key {scope.label!r} is still running; retry later"
                )
            await asyncio.sleep(self.poll_s)

    async def store(self, scope: ToolScope, result: dict[str, Any], cache_ttl_s: float, origin: str) -> None:
        """Keeps a (redacted) result for later reads (cache_ttl_s > 0) and for its idempotency key."""
        entry = CachedResult(json.dumps(result), 0, 0, "", origin, scope.binding)
        if cache_ttl_s > 0:
            await self.cache.put(scope.result_key, entry, cache_ttl_s)
        if scope.idempotency_key:
            await self.cache.put(scope.idempotency_key, entry, self.idempotency_ttl_s)

    async def release(self, scope: ToolScope) -> None:
        """The call holding the key ended without a result: a retry may run it."""
        if scope.idempotency_key:
            await self.cache.delete(scope.idempotency_key)
