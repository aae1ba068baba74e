"""Helpers for tests against the pool's real gRPC server and in-process engine simulators:
a simulator's VRAM as its /metrics reports it, a failed call's
status, the pool's specs for the simulators, and a WatchEndpoints follower."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request

import grpc
import pytest
from harness.pool.v1 import pool_pb2

from services.pool.scrape import parse_triton_metrics
from services.pool.state import EndpointSpec
from tests.helpers.polling import wait_for


def sim_endpoints(sims, gpu_type: str = "H100-80GB") -> tuple[EndpointSpec, ...]:
    """The pool's endpoints for running simulators, named sim-0, sim-1, ... (one GPU each)."""
    return tuple(
        EndpointSpec.make(f"sim-{i}", s.address, metrics_url=s.metrics_url, gpu_type=gpu_type, gpu_count=1)
        for i, s in enumerate(sims)
    )


def vram_used(sim) -> int:
    with urllib.request.urlopen(sim.metrics_url, timeout=10) as resp:
        return sum(g.memory_used_bytes for g in parse_triton_metrics(resp.read().decode()).gpus)


async def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), err.value.details()


class Watcher:
    """Follows WatchEndpoints into a name -> Endpoint picture, as a router would."""

    def __init__(self, stub, md) -> None:
        self.eps: dict[str, pool_pb2.Endpoint] = {}
        self.revision = 0
        self.scaled_to_zero: tuple[str, ...] = ()  # the models the last message listed at zero
        self._call = stub.WatchEndpoints(pool_pb2.WatchEndpointsRequest(), metadata=md)
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            await self._follow()

    async def _follow(self) -> None:
        async for msg in self._call:
            if msg.snapshot:
                self.eps = {}
            self.eps.update({e.name: e for e in msg.endpoints})
            for name in msg.removed:
                self.eps.pop(name, None)
            self.scaled_to_zero = tuple(msg.scaled_to_zero_models)
            self.revision = msg.revision

    def model_state(self, endpoint: str, model: str) -> int | None:
        ep = self.eps.get(endpoint)
        m = next((m for m in ep.models if m.name == model), None) if ep else None
        return m.state if m else None

    async def until(self, predicate, timeout: float = 20.0) -> None:
        async def fetch():
            return self

        await wait_for(fetch, predicate, timeout)

    def close(self) -> None:
        self._call.cancel()
