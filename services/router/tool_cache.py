"""The tool result cache and idempotency keys, scoped so nothing crosses agents or users.

A cached read is keyed on (tool, version, action, agent, user, keyed hash of the *raw*
arguments): two callers, or two different values that redact alike, never share an entry.
An idempotency key belongs to one (agent, user) and is bound to the call it was first used
for: reusing it for another tool, action or arguments is refused, not answered with the
first result. Entries hold results already redacted per the writer's policy, and are redacted
again with the reader's policy before they are served (the agent's policy may have changed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from services.common.errors import FailedPrecondition, InvalidArgument
from services.router.result_cache import CachedResult, CacheKeys, ResultCache

IDEMPOTENCY_TTL_S = 24 * 3600.0
MAX_IDEMPOTENCY_KEY_CHARS = 256


@dataclass(frozen=True)
class ToolScope:
    """One call's cache identity: the read-cache key, the idempotency entry and its binding."""

    result_key: str
    idempotency_key: str  # "" when the call carries none
    binding: str  # tool, version, action and raw arguments, as one keyed hash
    label: str  # the caller's idempotency key as given (for messages)


class ToolResults:
    def __init__(self, cache: ResultCache, keys: CacheKeys, idempotency_ttl_s: float = IDEMPOTENCY_TTL_S):
        self.cache = cache
        self.keys = keys
        self.idempotency_ttl_s = idempotency_ttl_s

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

    async def lookup(self, scope: ToolScope, cacheable: bool) -> dict[str, Any] | None:
        """The result to answer with (as stored: redact it for the reader), or None."""
        if scope.idempotency_key:
            first = await self.cache.get(scope.idempotency_key)
            if first is not None:
                if first.binding != scope.binding:
                    raise FailedPrecondition(
                        f"idempotency key {scope.label!r} was first used for another tool, action or "
                        "arguments; use a new key for a different call"
                    )
                return json.loads(first.text)
        if cacheable and (hit := await self.cache.get(scope.result_key)) is not None:
            return json.loads(hit.text)
        return None

    async def store(self, scope: ToolScope, result: dict[str, Any], cache_ttl_s: float, origin: str) -> None:
        """Keeps a (redacted) result for later reads (cache_ttl_s > 0) and for its idempotency key."""
        entry = CachedResult(json.dumps(result), 0, 0, "", origin, scope.binding)
        if cache_ttl_s > 0:
            await self.cache.put(scope.result_key, entry, cache_ttl_s)
        if scope.idempotency_key:
            await self.cache.put(scope.idempotency_key, entry, self.idempotency_ttl_s)
