"""Requests-per-minute and tokens-per-minute limits per agent and per user.

Algorithm: GCRA (the "generic cell rate algorithm", i.e. a token bucket stored as one number).
Each limit is one cell holding its theoretical arrival time `tat` in milliseconds. A limit of
L per minute has emission interval T = 60000/L ms; a request costing c units moves
tat' = max(tat, now) + c*T and is admitted when tat' - now <= 60000. So a fresh cell admits a
burst of up to L units, then refills at L per minute, and the denial's retry-after is exact:
tat' - now - 60000. One number per limit (no per-request entries, no window edges) keeps the
Redis script O(#limits) and lets a cell expire as soon as it is back to "full".

All cells of one request (agent RPM/TPM, user RPM/TPM) are checked and charged together: if any
is over, none is charged. Token cost is estimated up front (prompt + max_tokens) and corrected
by `settle` with the actual count (a negative delta refunds, never below "full").

The decision logic lives here once; `MemoryRateLimiter` applies it to a dict and the Redis
backend (`redis_limits.py`) runs the same steps inside one Lua script.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.common.errors import InvalidArgument, ResourceExhausted

PERIOD_MS = 60_000.0
# A request is refused only when it would overrun the window by more than this. Times are floats
# (milliseconds since boot, or since the epoch in Redis, stored there to the microsecond), so a
# full bucket's last unit can land a rounding error past the window: a limit of 7 per minute let
# only 6 through in a burst for most clock readings, and a limit of 1 refused its first request
# for a few. 60 ns a minute changes no limit; it is far above the error of any burst a limit allows.
ROUNDING_SLACK_MS = PERIOD_MS * 1e-6


@dataclass(frozen=True)
class RateLimits:
    """Per-minute limits from the registry's agent and user records (0 = unlimited)."""

    agent_rpm: int = 0
    agent_tpm: int = 0
    user_rpm: int = 0
    user_tpm: int = 0


@dataclass(frozen=True)
class Cell:
    """One limit applied to one request: `key` names the counter, `cost` is in the limit's unit."""

    key: str
    scope: str  # "agent" or "user"
    name: str
    kind: str  # "RPM" or "TPM"
    limit: int
    cost: int

    @property
    def interval_ms(self) -> float:
        return PERIOD_MS / self.limit


@dataclass(frozen=True)
class Reservation:
    """What `admit` charged; pass it back to `settle`. Holds the limits as they were at
    admission so a registry change in between does not skew the correction."""

    tokens: int
    cells: tuple[Cell, ...] = ()


def gcra_check(
    tats: Sequence[float | None], cells: Sequence[Cell], now: float
) -> tuple[int, float, list[float]]:
    """Returns (index of the limit with the longest wait or -1, retry_ms, new tats).

    Mirrors the Lua script in redis_limits.py; keep them in step.
    """
    worst, worst_retry, new = -1, 0.0, []
    for i, (tat, cell) in enumerate(zip(tats, cells, strict=True)):
        nt = max(tat if tat is not None else now, now) + cell.cost * cell.interval_ms
        over = nt - now - PERIOD_MS
        if over > ROUNDING_SLACK_MS and over > worst_retry:
            worst, worst_retry = i, over
        new.append(nt)
    return worst, worst_retry, new


def gcra_adjust(tat: float | None, cell: Cell, delta: int, now: float) -> float | None:
    """New tat after correcting a charge by `delta` units; None = back to full (drop the cell)."""
    nt = max(tat if tat is not None else now, now) + delta * cell.interval_ms
    return nt if nt > now else None


class RateLimiter(ABC):
    """Shared front of both backends: builds the cells, turns a denial into ResourceExhausted."""

    def __init__(self, prefix: str = "harness:") -> None:
        self._prefix = prefix

    def key(self, scope: str, name: str, kind: str) -> str:
        return f"{self._prefix}rl:{scope}:{name}:{kind.lower()}"

    def cells(self, agent: str, user: str, limits: RateLimits, tokens: int) -> tuple[Cell, ...]:
        wanted = [
            ("agent", agent, "RPM", limits.agent_rpm, 1),
            ("agent", agent, "TPM", limits.agent_tpm, tokens),
            # No user identity (service-to-service call): only the agent's limits apply.
            ("user", user, "RPM", limits.user_rpm if user else 0, 1),
            ("user", user, "TPM", limits.user_tpm if user else 0, tokens),
        ]
        out = []
        for scope, name, kind, limit, cost in wanted:
            if limit <= 0:
                continue
            if cost > limit:
                # Could never pass however long the caller waits, so retrying is pointless.
                raise InvalidArgument(
                    f"request needs {cost} tokens (prompt + max_tokens), over the {scope} "
                    f"'{name}' limit of {limit} tokens per minute"
                )
            out.append(Cell(self.key(scope, name, kind), scope, name, kind, limit, cost))
        return tuple(out)

    async def admit(self, agent: str, user: str, limits: RateLimits, tokens: int) -> Reservation:
        """Charges one request and `tokens` (estimated) against every limit, or none of them.

        Raises ResourceExhausted naming the limit with the longest wait, with retry_after_ms;
        InvalidArgument when `tokens` exceeds a TPM limit outright.
        """
        if tokens < 0:
            raise InvalidArgument(f"token estimate must be >= 0, got {tokens}")
        cells = self.cells(agent, user, limits, tokens)
        if not cells:
            return Reservation(tokens)
        worst, retry_ms = await self._admit(cells)
        if worst >= 0:
            c = cells[worst]
            unit = "requests" if c.kind == "RPM" else "tokens"
            raise ResourceExhausted(
                f"{c.scope} '{c.name}' is over its {c.kind} limit of {c.limit} {unit} per minute",
                retry_after_ms=max(1, math.ceil(retry_ms)),
            )
        return Reservation(tokens, cells)

    async def settle(
        self, reservation: Reservation, actual_tokens: int, *, refund_request: bool = False
    ) -> None:
        """Replaces the token estimate with `actual_tokens`; `refund_request` also gives the
        request back to RPM (for requests that never reached a backend)."""
        deltas = []
        for c in reservation.cells:
            if c.kind == "TPM" and actual_tokens != reservation.tokens:
                deltas.append((c, actual_tokens - reservation.tokens))
            elif c.kind == "RPM" and refund_request:
                deltas.append((c, -1))
        if deltas:  # the common case (estimate exact, no refund) costs no round trip
            await self._adjust(deltas)

    async def aclose(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Releases backend resources (no-op in memory)."""

    @abstractmethod
    async def _admit(self, cells: tuple[Cell, ...]) -> tuple[int, float]: ...

    @abstractmethod
    async def _adjust(self, deltas: list[tuple[Cell, int]]) -> None: ...


class MemoryRateLimiter(RateLimiter):
    """In-process cells for a single router without Redis. No awaits inside a decision, so
    each admission is atomic under asyncio."""

    _SWEEP_EVERY = 4096

    def __init__(self, prefix: str = "harness:", clock_ms: Callable[[], float] | None = None) -> None:
        super().__init__(prefix)
        self._clock = clock_ms or (lambda: time.monotonic() * 1000.0)
        self._tats: dict[str, float] = {}
        self._ops = 0

    async def _admit(self, cells: tuple[Cell, ...]) -> tuple[int, float]:
        now = self._clock()
        self._maybe_sweep(now)
        worst, retry, new = gcra_check([self._tats.get(c.key) for c in cells], cells, now)
        if worst < 0:
            for c, nt in zip(cells, new, strict=True):
                self._tats[c.key] = nt
        return worst, retry

    async def _adjust(self, deltas: list[tuple[Cell, int]]) -> None:
        now = self._clock()
        for c, d in deltas:
            nt = gcra_adjust(self._tats.get(c.key), c, d, now)
            if nt is None:
                self._tats.pop(c.key, None)
            else:
                self._tats[c.key] = nt

    def _maybe_sweep(self, now: float) -> None:
        # A cell whose tat has passed is identical to no cell: drop them so idle agents and
        # users do not accumulate (the in-memory analogue of Redis key expiry).
        self._ops += 1
        if self._ops % self._SWEEP_EVERY == 0:
            self._tats = {k: v for k, v in self._tats.items() if v > now}
