"""Local views of pool state (and helpers shared with the registry mirror), so the hot path
does not wait on other services.

Endpoints are polled from the pool in the background; the pool's WatchEndpoints stream
replaces the poll behind the same methods. The registry copy is in ``registry_mirror``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TypeVar

import grpc
from harness.pool.v1 import pool_pb2, pool_pb2_grpc

from services.common.registry_mirror import AccessDecision  # noqa: F401 (re-exported)
from services.common.streams import BackgroundFollower
from services.router.scheduling import Candidate

log = logging.getLogger("harness.router.views")
K = TypeVar("K")
V = TypeVar("V")


class EndpointView(BackgroundFollower):
    _task_name = "endpoint-view"

    """Endpoints and their models' live state, from the pool's WatchEndpoints stream.

    Candidates per Triton model are rebuilt on each change (not per request). A broken stream
    keeps the last known state and resumes from its revision; a pool without WatchEndpoints
    (UNIMPLEMENTED) is polled with ListEndpoints instead.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        interval_s: float = 0.5,
        on_change: Callable[[], None] | None = None,
        own_inflight: Callable[[str, str], int] | None = None,
    ) -> None:
        super().__init__()
        self._stub = pool_pb2_grpc.PoolStub(channel)
        self._interval = interval_s
        self._on_change = on_change
        # This router's in-flight count per (endpoint, model) (the scheduler's), stamped on each
        # snapshot of the pool's figures so later dispatches and completions can correct them.
        self._own_inflight = own_inflight
        self._endpoints: dict[str, pool_pb2.Endpoint] = {}
        # (endpoint, model) -> own in-flight when the endpoint's figures arrived
        self._stamps: dict[tuple[str, str], int] = {}
        self._by_model: dict[str, list[Candidate]] = {}
        # Triton models the pool holds at zero (or is waking): requests wait instead of failing.
        self._scaled_to_zero: frozenset[str] = frozenset()
        self._changed = asyncio.Event()  # set and replaced on every apply
        self.revision = 0

    def candidates(self, triton_model: str) -> list[Candidate]:
        """Endpoints that have the model READY and are healthy (the scheduler filters further)."""
        return self._by_model.get(triton_model, [])

    def scaled_to_zero(self, triton_model: str) -> bool:
        """Whether the pool says the model's deployment is at zero (or waking, none READY yet)."""
        return triton_model in self._scaled_to_zero

    async def wait_for_candidates(self, triton_model: str) -> None:
        """Returns once the model has a candidate; woken by each pool update, never polling.
        The caller bounds the wait (asyncio.timeout)."""
        while not self.candidates(triton_model):
            await self._changed.wait()  # this update's event: the next apply sets it

    def kv_event_sources(self, events_label: str, replay_label: str) -> dict[str, tuple[str, str]]:
        """endpoint -> (KV events address, replay address or "") from the endpoints' pool labels,
        for the endpoints that name one."""
        out = {}
        for name, ep in self._endpoints.items():
            address = ep.labels.get(events_label, "")
            if address:
                out[name] = (address, ep.labels.get(replay_label, ""))
        return out

    def gpu_type(self, endpoint: str) -> str:
        ep = self._endpoints.get(endpoint)
        return ep.gpu_type if ep else ""

    def apply(
        self,
        endpoints: list[pool_pb2.Endpoint],
        removed: list[str] = (),
        snapshot: bool = True,
        scaled_to_zero: Iterable[str] | None = None,
    ) -> None:
        """One pool update. `scaled_to_zero`: the pool's full list (None: keep the last one)."""
        own = self._own_inflight or (lambda _name, _model: -1)
        if scaled_to_zero is not None:
            self._scaled_to_zero = frozenset(scaled_to_zero)
        if snapshot:
            self._endpoints, self._stamps = {}, {}
        for ep in endpoints:
            self._endpoints[ep.name] = ep
            for key in [k for k in self._stamps if k[0] == ep.name]:
                del self._stamps[key]
            for m in ep.models:
                self._stamps[(ep.name, m.name)] = own(ep.name, m.name)
        for name in removed:
            self._endpoints.pop(name, None)
            for key in [k for k in self._stamps if k[0] == name]:
                del self._stamps[key]
        by_model: dict[str, list[Candidate]] = {}
        for ep in self._endpoints.values():
            if ep.health != pool_pb2.ENDPOINT_HEALTH_HEALTHY:
                continue
            for m in ep.models:
                if m.state == pool_pb2.MODEL_STATE_READY:
                    by_model.setdefault(m.name, []).append(self._candidate(ep, m))
        self._by_model = by_model
        self._mark_ready()
        self._changed.set()  # wakes requests held for a model scaled to zero
        self._changed = asyncio.Event()
        if self._on_change is not None:
            self._on_change()

    def _candidate(self, ep: pool_pb2.Endpoint, m: pool_pb2.EndpointModel) -> Candidate:
        return Candidate(
            name=ep.name,
            address=ep.address,
            model=m.name,
            waiting=m.waiting_requests,
            active=m.active_requests,
            max_running=m.max_running_requests,
            kv_cache_fraction=m.kv_cache_fraction,
            gpu_utilization=ep.gpu_utilization,
            recent_ttft_s=m.recent_ttft_ms / 1000.0,
            recent_latency_s=m.recent_latency_ms / 1000.0,
            own_at_snapshot=self._stamps.get((ep.name, m.name), -1),
            kind=ep.kind or "triton",
            kv_cache_known=not m.kv_cache_unknown,
            prefix_hit_rate=m.prefix_cache_hit_rate if m.HasField("prefix_cache_hit_rate") else -1.0,
        )

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            try:
                call = self._stub.WatchEndpoints(pool_pb2.WatchEndpointsRequest(since_revision=self.revision))
                async for msg in call:
                    backoff = 0.05
                    self.apply(
                        list(msg.endpoints), list(msg.removed), msg.snapshot, msg.scaled_to_zero_models
                    )
                    self.revision = msg.revision
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    await self._poll()
                    return
                log.warning("pool watch broke (%s); keeping last known endpoints", exc.code().name)
            except Exception:  # an update that cannot be applied must not end the watch for good
                log.exception("applying a pool update failed; watching again from revision %d", self.revision)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _poll(self) -> None:
        while True:
            try:
                resp = await self._stub.ListEndpoints(pool_pb2.ListEndpointsRequest(), timeout=2.0)
                self.apply(list(resp.endpoints))
            except grpc.aio.AioRpcError as exc:
                log.warning("pool unreachable (%s); keeping last known endpoints", exc.code().name)
            except Exception:
                log.exception("applying the pool's endpoints failed; keeping last known endpoints")
            await asyncio.sleep(self._interval)
