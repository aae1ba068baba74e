"""Holding requests for a model the pool scaled to zero while it wakes (Knative's activator).

The pool's WatchEndpoints lists the models whose deployment is at zero (or woken, with no
READY replica yet). A request for one of them finds no endpoint; instead of refusing it, the
dispatcher asks the pool to wake the deployment (ActivateDeployment, at most once per model
every `ask_every_s` from this router: a burst of requests, or the retries of a long cold start,
do not stampede the pool) and holds the request until the endpoint view shows a READY replica,
then schedules it as usual. The wait is woken by the view's updates (no polling) and bounded
by the request's own deadline and `wait_s`; past that the caller gets UNAVAILABLE saying the
model is being activated, to retry.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

import grpc
from harness.pool.v1 import pool_pb2, pool_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.common.errors import Unavailable
from services.common.streams import cancel_all
from services.router.views import EndpointView

log = logging.getLogger("harness.router.activation")

ASK_EVERY_S = 5.0  # one ActivateDeployment per model per this many seconds, per router
MAX_HELD = 1024  # requests one router holds at once; more are refused (UNAVAILABLE)
MAX_MODELS_TRACKED = 1024  # models whose last ask is remembered (the registry's catalog is smaller)


class ActivationMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.held = Counter(
            "harness_router_activation_holds",
            "Requests held for a model scaled to zero, by outcome (served: a replica came; "
            "timed_out: UNAVAILABLE after the wait; refused: too many held already)",
            ["outcome"],
            registry=registry,
        )
        self.asked = Counter(
            "harness_router_activations",
            "ActivateDeployment calls this router made, by outcome (ok, failed)",
            ["outcome"],
            registry=registry,
        )
        self.holding = Gauge(
            "harness_router_held_requests", "Requests held now for a model scaled to zero", registry=registry
        )
        for outcome in ("served", "timed_out", "refused"):
            self.held.labels(outcome)
        for outcome in ("ok", "failed"):
            self.asked.labels(outcome)


class Activator:
    def __init__(
        self,
        view: EndpointView,
        activate: Callable[[str], Awaitable[object]],
        wait_s: float,
        metrics: ActivationMetrics | None = None,
        *,
        ask_every_s: float = ASK_EVERY_S,
        max_held: int = MAX_HELD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.view, self._activate, self.wait_s = view, activate, wait_s
        self.metrics = metrics or ActivationMetrics(None)
        self.ask_every_s, self.max_held, self._clock = ask_every_s, max_held, clock
        self._asked: dict[str, float] = {}  # model -> when this router last asked the pool
        self._tasks: set[asyncio.Task] = set()
        self.held = 0

    def holds(self, triton_model: str) -> bool:
        """Whether a request for the model should wait for a wake instead of failing."""
        return self.wait_s > 0 and self.view.scaled_to_zero(triton_model)

    async def hold(self, triton_model: str, time_left_s: float | None) -> None:
        """Asks for a wake (rate-limited) and returns once the model has an endpoint; raises
        Unavailable when `wait_s` or the caller's `time_left_s` runs out first."""
        if self.held >= self.max_held:
            self.metrics.held.labels("refused").inc()
            raise Unavailable(
                f"model {triton_model!r} is scaled to zero and this router already holds "
                f"{self.held} requests for models waking up; retry in a few seconds"
            )
        self._ask(triton_model)
        wait = self.wait_s if time_left_s is None else max(0.0, min(self.wait_s, time_left_s))
        self.held += 1
        self.metrics.holding.inc()
        try:
            async with asyncio.timeout(wait):
                await self.view.wait_for_candidates(triton_model)
        except TimeoutError:
            self.metrics.held.labels("timed_out").inc()
            raise Unavailable(
                f"model {triton_model!r} was scaled to zero and is being activated (its cold start "
                f"outlasted the {wait:.0f} s this request could wait); retry shortly"
            ) from None
        finally:
            self.held -= 1
            self.metrics.holding.dec()
        self.metrics.held.labels("served").inc()

    def _ask(self, triton_model: str) -> None:
        now = self._clock()
        if now - self._asked.get(triton_model, -math.inf) < self.ask_every_s:
            return
        if len(self._asked) >= MAX_MODELS_TRACKED:
            self._asked.clear()  # at worst one extra (idempotent) ask per model
        self._asked[triton_model] = now
        task = asyncio.get_running_loop().create_task(self._call(triton_model))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, triton_model: str) -> None:
        try:
            await self._activate(triton_model)
            self.metrics.asked.labels("ok").inc()
        except Exception as exc:  # held requests still wait: another router's ask may wake it
            self.metrics.asked.labels("failed").inc()
            log.warning("asking the pool to activate %s failed: %s", triton_model, exc)

    async def close(self) -> None:
        await cancel_all(list(self._tasks))


def pool_activate(channel: grpc.aio.Channel, timeout_s: float = 5.0) -> Callable[[str], Awaitable[object]]:
    """ActivateDeployment on the pool the router follows (its channel, its credentials)."""
    stub = pool_pb2_grpc.PoolStub(channel)

    async def activate(triton_model: str) -> object:
        return await stub.ActivateDeployment(
            pool_pb2.ActivateDeploymentRequest(model=triton_model), timeout=timeout_s
        )

    return activate
