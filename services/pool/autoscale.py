"""The pool's scaling loop: replica advice (scaling.py) applied once it has held for a while.

Every `interval_s` each deployment gets its advice from the live signals. A scale-out is
applied once the deployment has been hot for `up_after_s`, a scale-in once it has not been hot
that long for `down_after_s` and most of that window (`down_share`) was cold (longer: a lull
inside a surge must not cost a cold start when the load comes back; but a bursty load's lone
samples above the low marks must not keep an idle replica for ever); after either, `cooldown_s` passes before the next change, so the new replica
takes its share of the traffic and the figures show it before they are read again. Nothing
changes while one of the deployment's loads is still running (its replica is not READY, so
the signals would still call for one). The floor is the largest claim (what agents and
operators asked for) and `min_replicas`; the ceiling `max_replicas` and the healthy endpoints.

A scale-out passes the new replica's expected compute share (the model's measured GPU compute
spread over one more replica) to placement, which then picks a GPU with the compute to spare,
not only the memory (placement.py). Changes run as background tasks, one per deployment at a
time, so a cold start of minutes never holds up the loop or the other deployments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from services.common.errors import HarnessError
from services.common.streams import cancel_all
from services.pool.deployments import DeploymentManager
from services.pool.scaling import Advice, ScalingLimits, advise_one, new_replica_share, signals_of
from services.pool.state import HEALTHY

log = logging.getLogger("harness.pool.autoscale")
MAX_EVENTS = 512  # scaling events kept for reading (ListDeployments-style views, benchmarks)


@dataclass(frozen=True)
class AutoscaleSettings:
    interval_s: float = 0.0  # 0 = the loop is off (advice only on request)
    up_after_s: float = 5.0  # hot this long before one more replica
    down_after_s: float = 120.0  # cold this long before one less
    cooldown_s: float = 30.0  # after a change, before the next one
    # Share of the evaluations in the last down_after_s that must advise one less (none may
    # advise one more): a sample between the marks does not restart the scale-in window.
    down_share: float = 0.8

    def __post_init__(self) -> None:
        if self.interval_s < 0 or self.up_after_s < 0 or self.down_after_s < 0 or self.cooldown_s < 0:
            raise ValueError("autoscale interval, windows and cooldown must be >= 0")
        if not 0.0 < self.down_share <= 1.0:
            raise ValueError(f"autoscale down_share must be in (0, 1], got {self.down_share}")


@dataclass
class Trend:
    """How long a deployment's advice has pointed the same way, when it last advised one more
    replica, the advice of the last ``down_after_s``, and when the replicas last changed."""

    direction: int = 0  # +1 out, -1 in, 0 hold
    since: float = 0.0
    changed_at: float = -math.inf
    hot_at: float | None = None  # the last time hot for up_after_s; None: since = the trend's start
    recent: deque[tuple[float, int]] = field(default_factory=deque)  # (time, direction)

    def __post_init__(self) -> None:
        if self.hot_at is None:
            self.hot_at = self.since


@dataclass(frozen=True)
class ScalingEvent:
    at: float  # the loop's clock
    model: str
    before: int
    after: int
    reason: str
    error: str = ""  # why it was not applied ("" = applied)
    done: bool = False  # False while the load or unload runs


def decide(
    advice: Advice, trend: Trend, now: float, settings: AutoscaleSettings, loading: bool
) -> int | None:
    """The replica count to scale to now, or None to hold; updates `trend`.

    One more replica once the advice has said so for `up_after_s` without a break. One less once
    the advice has not said "one more" for `up_after_s` without a break (what a scale-out needs)
    within `down_after_s`, and at least `down_share` of that window's evaluations advised less:
    a lone hot or in-between sample counts against the share but does not restart the window."""
    direction = (advice.advised > advice.current) - (advice.advised < advice.current)
    if direction != trend.direction:
        trend.direction, trend.since = direction, now
    if direction > 0 and now - trend.since >= settings.up_after_s:
        trend.hot_at = now  # hot long enough to call for a replica: no scale-in for a while
    recent = trend.recent
    recent.append((now, direction))
    while recent[0][0] <= now - settings.down_after_s:
        recent.popleft()
    if direction == 0 or loading or now - trend.changed_at < settings.cooldown_s:
        return None
    if direction > 0:
        return advice.advised if now - trend.since >= settings.up_after_s else None
    calm_since = max(trend.hot_at, trend.changed_at)  # type: ignore[type-var]
    if now - calm_since < settings.down_after_s:
        return None
    cold = sum(1 for _, d in recent if d < 0)  # the window starts after calm_since
    return advice.advised if cold >= settings.down_share * len(recent) else None


class Autoscaler:
    def __init__(
        self,
        manager: DeploymentManager,
        limits: ScalingLimits,
        settings: AutoscaleSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manager, self.limits, self.settings, self.clock = manager, limits, settings, clock
        self.trends: dict[str, Trend] = {}
        self.events: deque[ScalingEvent] = deque(maxlen=MAX_EVENTS)
        self._tasks: dict[str, asyncio.Task] = {}

    def step(self) -> list[tuple[str, int]]:
        """One evaluation; starts the changes it decides on and returns them (model, replicas)."""
        now = self.clock()
        endpoints = sum(1 for s in self.manager.table.states() if s.health == HEALTHY)
        started = []
        for view in self.manager.views():
            model = view.model
            if model in self._tasks:
                continue
            dep = self.manager.get(model)
            floor = max([self.limits.min_replicas, *(c.replicas for c in dep.claims.values())]) if dep else 1
            signals = signals_of(self.manager, model)
            advice = advise_one(model, signals, replace(self.limits, min_replicas=floor), endpoints)
            trend = self.trends.setdefault(model, Trend(since=now))
            target = decide(advice, trend, now, self.settings, self.manager.loading(model))
            if target is None:
                continue
            trend.changed_at = now
            share = new_replica_share(signals, target)
            task = asyncio.get_running_loop().create_task(self._apply(advice, target, share, now))
            self._tasks[model] = task
            task.add_done_callback(lambda _t, m=model: self._tasks.pop(m, None))
            started.append((model, target))
        return started

    async def _apply(self, advice: Advice, target: int, share: float, now: float) -> None:
        event = ScalingEvent(now, advice.model, advice.current, target, advice.reason)
        self.events.append(event)  # seen at once: a cold start can take minutes
        error = ""
        try:
            await self.manager.scale_to(advice.model, target, share)
            log.info("scaled %s %d -> %d: %s", advice.model, advice.current, target, advice.reason)
        except HarnessError as exc:
            error = exc.message
            log.warning("scaling %s %d -> %d not applied: %s", advice.model, advice.current, target, error)
        with contextlib.suppress(ValueError):  # pushed out of the bounded deque meanwhile
            self.events[self.events.index(event)] = replace(event, error=error, done=True)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval_s)
            try:
                self.step()
            except Exception:  # one bad evaluation must not end autoscaling for good
                log.exception("autoscale step failed")

    async def close(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await cancel_all(list(self._tasks.values()))
