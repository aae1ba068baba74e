"""The agent's data policy on the router's path: its prompt is redacted before the model, the
cache and the log see it, and the model's output is redacted before it leaves the router.
Only kinds and counts are recorded, never values. Large inputs are redacted in worker
processes (redaction_workers.py), so the event loop never waits on them.
"""

from __future__ import annotations

import asyncio
import hashlib

from harness.registry.v1 import registry_pb2

from services.common.errors import FailedPrecondition
from services.router.redaction import Redactor, StreamRedactor, policy_from_proto
from services.router.redaction.stream import DEFAULT_HOLDBACK
from services.router.redaction_workers import RedactionWorkers

MAX_REDACTORS = 10_000
OUTPUT_PIECE_CHARS = 512  # ~a few ms of redaction at worst (digit-dense text)


# The longest value of each kind, formatting included: streamed output is held back by the
# longest among the agent's kinds, so a value split across chunks is still seen whole. Kinds
# not listed (configured patterns, email) get the library's full hold-back.
_MAX_VALUE_CHARS = {"phone": 24, "cn_resident_id": 18, "bank_card": 24, "ipv4": 15, "ipv6": 45}


def holdback_for(redactor: Redactor) -> int:
    return max((_MAX_VALUE_CHARS.get(kind, DEFAULT_HOLDBACK) for kind in redactor.modes), default=0)


class OutputRedaction:
    """Redacts one generation's streamed output (a no-op for agents without a policy)."""

    def __init__(self, redactor: Redactor | None, fingerprint: str, counts: dict[str, int]) -> None:
        self._stream = StreamRedactor(redactor, holdback_for(redactor)) if redactor is not None else None
        self.fingerprint = fingerprint
        self._counts = counts

    @property
    def active(self) -> bool:
        """Whether the agent's policy redacts output at all."""
        return self._stream is not None

    async def feed(self, text: str) -> str:
        """The redacted text now safe to release. A large chunk (an engine's whole answer at once)
        is fed in pieces, yielding the event loop between them: its cost is spread, never a stall."""
        if self._stream is None:
            return text
        if len(text) <= OUTPUT_PIECE_CHARS:
            return self._stream.feed(text)
        released = []
        for i in range(0, len(text), OUTPUT_PIECE_CHARS):
            released.append(self._stream.feed(text[i : i + OUTPUT_PIECE_CHARS]))
            await asyncio.sleep(0)
        return "".join(released)

    def flush(self) -> str:
        if self._stream is None:
            return ""
        tail = self._stream.flush()
        for kind, n in self._stream.counts.items():
            self._counts[kind] = self._counts.get(kind, 0) + n
        return tail


class AgentRedactors:
    """One Redactor per agent record (rebuilt when the record's revision moves)."""

    def __init__(self, key: str = "", workers: RedactionWorkers | None = None) -> None:
        self._key = key.encode() if key else None
        self._by_agent: dict[tuple[str, int], tuple[Redactor, str] | None] = {}
        self.workers = workers or RedactionWorkers()

    def for_agent(self, agent: registry_pb2.Agent) -> tuple[Redactor, str] | None:
        """(redactor, policy fingerprint), or None when the agent's policy treats no PII."""
        if not agent.data_policy.pii:
            return None
        key = (agent.name, agent.revision)
        if key not in self._by_agent:
            try:
                redactor = Redactor(policy_from_proto(agent.data_policy), self._key)
            except ValueError as exc:  # unknown kind, hash without a key...: refuse, do not leak
                raise FailedPrecondition(
                    f"agent {agent.name!r}'s data policy cannot be applied: {exc}"
                ) from exc
            digest = hashlib.sha256(agent.data_policy.SerializeToString(deterministic=True)).hexdigest()[:16]
            if len(self._by_agent) >= MAX_REDACTORS:
                self._by_agent.clear()
            self._by_agent[key] = (redactor, digest)
        return self._by_agent[key]

    async def prompt(
        self, agent: registry_pb2.Agent, text: str, counts: dict[str, int]
    ) -> tuple[str, OutputRedaction]:
        """The redacted prompt, and the output redaction for the same generation."""
        found = self.for_agent(agent)
        if found is None:
            return text, OutputRedaction(None, "", counts)
        redactor, fingerprint = found
        result = await self.workers.redact(redactor, text)
        _add(counts, result.counts)
        return result.text, OutputRedaction(redactor, fingerprint, counts)

    async def redact_json(self, redactor: Redactor | None, value, counts: dict[str, int]):
        """JSON-like data (tool arguments, results) redacted by `redactor` (as is without one)."""
        if redactor is None:
            return value
        out, found = await self.workers.redact_json(redactor, value)
        _add(counts, found)
        return out

    def close(self) -> None:
        self.workers.close()


def _add(counts: dict[str, int], more: dict[str, int]) -> None:
    for kind, n in more.items():
        counts[kind] = counts.get(kind, 0) + n
