"""Background probes: one task per endpoint, folding what it sees into the endpoint table.

Each round runs, concurrently and with short deadlines:
- gRPC: `grpc.health.v1.Health/Check` and `ServerReady` on Triton's GRPCInferenceService.
  These alone decide health (endpoints that do not serve the health service at all,
  UNIMPLEMENTED, are judged by ServerReady). The models come from `RepositoryIndex`; when
  the engine refuses it (a restricted repository protocol), from `ModelReady` of each model
  the pool's catalog knows. Calls carry the endpoint's configured headers (access.py).
- HTTP: a GET of the metrics URL over a keep-alive session (http_probe.py). A failed scrape
  only means "no fresh load figures": it never marks an endpoint down by itself.
After a failed gRPC round the channel is dropped and the next round dials afresh, so a
restarted server is seen on the next probe instead of after gRPC's reconnect backoff.

OpenAI-protocol endpoints (kind "openai") are probed over HTTP instead (openai_probe.py): the
flavour's health route and `GET /v1/models`; their metrics are read in the flavour's names
(flavours.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from services.common.streams import cancel_all
from services.pool.access import NO_ACCESS, EngineAccess
from services.pool.endpoints import EndpointTable
from services.pool.flavours import flavour_of, parse_flavour_metrics
from services.pool.http_probe import HttpFailure, HttpSession, metrics_session
from services.pool.openai_probe import http_client, probe_openai
from services.pool.scrape import MAX_METRICS_BYTES, parse_triton_metrics
from services.pool.state import (
    HEALTHY,
    UNHEALTHY,
    EndpointSpec,
    GpuSample,
    IndexEntry,
    MetricsSample,
    ProbeResult,
)

log = logging.getLogger("harness.pool.probe")

# Returns NVML figures for an endpoint name, or None when NVML does not cover it.
GpuOverride = Callable[[str], tuple[GpuSample, ...] | None]


MAX_READY_PROBES = 64  # ModelReady calls per round when RepositoryIndex is refused


@dataclass(frozen=True)
class EngineReach:
    """Per-address headers/TLS, and the Triton models to ask ModelReady about when an engine
    refuses RepositoryIndex (the catalog's)."""

    access: Callable[[str], EngineAccess] = lambda _address: NO_ACCESS
    models: Callable[[], tuple[str, ...]] = tuple


@dataclass(frozen=True)
class ProbeSettings:
    interval_s: float = 0.5
    timeout_s: float = 0.5  # deadline of each gRPC probe call
    metrics_timeout_s: float = 1.0


class Prober:
    """Probes one endpoint until cancelled."""

    def __init__(
        self,
        spec: EndpointSpec,
        table: EndpointTable,
        settings: ProbeSettings,
        gpu_override: GpuOverride | None = None,
        reach: EngineReach | None = None,
    ) -> None:
        self.spec = spec
        self._table = table
        self._settings = settings
        self._gpu_override = gpu_override
        self._reach = reach or EngineReach()
        self._channel: grpc.aio.Channel | None = None
        self._stubs: tuple[health_pb2_grpc.HealthStub, service_pb2_grpc.GRPCInferenceServiceStub] | None = (
            None
        )
        self._http: HttpSession | None = None  # an OpenAI engine's API
        self._metrics: HttpSession | None = None

    async def run(self) -> None:
        try:
            while True:
                started = time.monotonic()
                try:
                    self._round(await self.probe_once())
                except Exception:  # a bug in one round must not stop probing for good
                    log.exception("probe round for %s failed", self.spec.name)
                elapsed = time.monotonic() - started
                await asyncio.sleep(max(0.0, self._settings.interval_s - elapsed))
        finally:
            await self._close()

    def _round(self, result: ProbeResult) -> None:
        before = self._table.get(self.spec.name)
        state, _ = self._table.apply_probe(self.spec.name, self.spec.address, result)
        if state is not None and before is not None and state.health != before.health:
            if state.health == UNHEALTHY:
                log.warning("endpoint %s is UNHEALTHY: %s", self.spec.name, result.error)
            elif state.health == HEALTHY:
                log.info("endpoint %s is HEALTHY", self.spec.name)

    async def probe_once(self) -> ProbeResult:
        engine = self._probe_http() if self.spec.kind == "openai" else self._probe_grpc()
        (ok, models, error), text = await asyncio.gather(engine, self._scrape())
        metrics = self._parse_metrics(text, models) if text is not None else None
        gpus = self._gpu_override(self.spec.name) if self._gpu_override else None
        if gpus is None and metrics is not None:
            gpus = metrics.gpus
        return ProbeResult(ok=ok, models=models, metrics=metrics, gpus=gpus, error=error)

    async def _probe_http(self) -> tuple[bool, tuple[IndexEntry, ...], str]:
        if self._http is None:
            access = self._reach.access(self.spec.address)
            self._http = http_client(self.spec.address, access, self._settings.timeout_s)
        return await probe_openai(self._http, self.spec.address, flavour_of(self.spec.flavour))

    async def _probe_grpc(self) -> tuple[bool, tuple[IndexEntry, ...], str]:
        access = self._reach.access(self.spec.address)
        if self._channel is None or self._stubs is None:
            self._channel = access.channel(self.spec.address)
            self._stubs = (
                health_pb2_grpc.HealthStub(self._channel),
                service_pb2_grpc.GRPCInferenceServiceStub(self._channel),
            )
        timeout, md = self._settings.timeout_s, access.headers
        health, triton = self._stubs
        try:
            check, ready = await asyncio.gather(
                self._health_check(health, timeout, md),
                triton.ServerReady(service_pb2.ServerReadyRequest(), timeout=timeout, metadata=md),
            )
        except grpc.aio.AioRpcError as exc:
            await self._drop_channel()
            return False, (), f"{exc.code().name}: {exc.details()}"
        if not check:
            return False, (), "health check: NOT_SERVING"
        if not ready.ready:
            return False, (), "ServerReady: not ready"
        try:
            return True, await self._models(triton, timeout, md), ""
        except grpc.aio.AioRpcError as exc:
            await self._drop_channel()
            return False, (), f"{exc.code().name}: {exc.details()}"

    async def _models(self, triton, timeout: float, md) -> tuple[IndexEntry, ...]:
        try:
            index = await triton.RepositoryIndex(
                service_pb2.RepositoryIndexRequest(ready=False), timeout=timeout, metadata=md
            )
            return tuple(IndexEntry(m.name, m.version, m.state) for m in index.models)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            log.debug("RepositoryIndex on %s refused (%s): asking ModelReady", self.spec.name, exc.details())
        names = self._reach.models()[:MAX_READY_PROBES]
        answers = await asyncio.gather(
            *(
                triton.ModelReady(service_pb2.ModelReadyRequest(name=n), timeout=timeout, metadata=md)
                for n in names
            )
        )
        return tuple(IndexEntry(n, "1", "READY") for n, a in zip(names, answers, strict=True) if a.ready)

    @staticmethod
    async def _health_check(stub: health_pb2_grpc.HealthStub, timeout: float, md) -> bool:
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout, metadata=md)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return True  # no health service: ServerReady decides
            raise
        return resp.status == health_pb2.HealthCheckResponse.SERVING

    async def _scrape(self) -> str | None:
        url = self.spec.metrics_url
        if not url:
            return None
        if self._metrics is None:
            self._metrics = metrics_session(url, self._settings.metrics_timeout_s)
        try:
            status, body = await self._metrics.get(url, MAX_METRICS_BYTES)
        except HttpFailure as exc:  # refused, timeout, reset: all "no figures"
            log.debug("metrics scrape of %s failed: %s", self.spec.name, exc)
            return None
        if not 200 <= status < 300 or body is None:
            log.debug(
                "metrics scrape of %s: HTTP %s%s", self.spec.name, status, "" if body else ", over the bound"
            )
            return None
        return body.decode("utf-8", errors="replace")

    def _parse_metrics(self, text: str, models: tuple[IndexEntry, ...]) -> MetricsSample | None:
        """Triton's names, or the flavour's for an OpenAI endpoint (a server without a model
        label, TGI, gives its figures to the model it serves)."""
        try:
            if self.spec.kind == "openai":
                served = tuple(m.name for m in models)
                return parse_flavour_metrics(text, flavour_of(self.spec.flavour), served, self.spec.gpu_type)
            return parse_triton_metrics(text, gpu_name=self.spec.gpu_type)
        except Exception as exc:  # malformed text: "no figures", never "down"
            log.debug("metrics of %s unreadable: %s", self.spec.name, exc)
            return None

    async def _drop_channel(self) -> None:
        channel, self._channel, self._stubs = self._channel, None, None
        if channel is not None:
            await channel.close(grace=None)

    async def _close(self) -> None:
        await self._drop_channel()
        for session in (self._http, self._metrics):
            if session is not None:
                await session.close()
        self._http = self._metrics = None


class ProbeSupervisor:
    """Keeps exactly one probe task per registered endpoint."""

    def __init__(
        self,
        table: EndpointTable,
        settings: ProbeSettings,
        gpu_override: GpuOverride | None = None,
        reach: EngineReach | None = None,
    ) -> None:
        self._table = table
        self._settings = settings
        self._gpu_override = gpu_override
        self._reach = reach
        self._tasks: dict[str, tuple[Prober, asyncio.Task]] = {}

    def ensure(self, spec: EndpointSpec) -> None:
        """Starts probing `spec`, restarting the task only when where it probes has changed."""
        current = self._tasks.get(spec.name)
        if current is not None:
            prober, task = current
            where = (spec.address, spec.metrics_url, spec.kind, spec.flavour)
            if (prober.spec.address, prober.spec.metrics_url, prober.spec.kind, prober.spec.flavour) == where:
                prober.spec = spec  # labels/GPU type only: the running task picks them up
                return
            task.cancel()
        prober = Prober(spec, self._table, self._settings, self._gpu_override, self._reach)
        task = asyncio.get_running_loop().create_task(prober.run(), name=f"pool-probe-{spec.name}")
        task.add_done_callback(_log_crash)
        self._tasks[spec.name] = (prober, task)

    async def stop(self, name: str) -> None:
        current = self._tasks.pop(name, None)
        if current is not None:
            current[1].cancel()
            await asyncio.gather(current[1], return_exceptions=True)

    async def close(self) -> None:
        tasks = [t for _, t in self._tasks.values()]
        self._tasks.clear()
        await cancel_all(tasks)


def _log_crash(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("probe task %s died", task.get_name(), exc_info=task.exception())
