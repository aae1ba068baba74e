"""Start and stop a simulator: Triton's gRPC server (inference, health, reflection), the OpenAI
HTTP API (openai_api.py), or both over the same engines, + /metrics and /faults."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from services.common.config import TlsFiles
from services.common.http_server import HttpServer, start_http_server

from .admin import build_http_app
from .catalog import Catalog, load_catalog
from .config import SimulatorConfig
from .faults import FaultInjector
from .kv_events import KvEventPublisher
from .metrics import MetricsServer, build_registry
from .openai_api import OpenAIApi
from .server import SERVICE_NAME, InferenceServicer
from .simulator import Simulator
from .vllm_metrics import build_vllm_registry

log = logging.getLogger("enginesim")


@dataclass
class RunningServer:
    """A started simulator. ``port``/``metrics_port`` are the bound ones (useful with port 0)."""

    config: SimulatorConfig
    sim: Simulator
    server: grpc.aio.Server | None  # None when the Triton protocol is off
    health: health.aio.HealthServicer
    port: int  # the gRPC port (0 when off)
    metrics: MetricsServer | None
    faults: FaultInjector
    openai: HttpServer | None = None
    kv_events: KvEventPublisher | None = None

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    @property
    def openai_url(self) -> str:
        """Base URL of the OpenAI API ("" when off)."""
        return f"http://{self.config.host}:{self.openai.port}" if self.openai else ""

    @property
    def metrics_port(self) -> int | None:
        return self.metrics.port if self.metrics else None

    def where(self) -> str:
        """The bound addresses, as the startup log lines print them."""
        grpc_at = self.address if self.server is not None else "off"
        openai_at = self.openai_url or "off"
        kv = self.kv_events
        kv_at = f" kv-events={kv.endpoint} kv-replay={kv.replay_endpoint or 'off'}" if kv else ""
        return f"grpc={grpc_at} metrics={self.metrics_port} openai={openai_at}{kv_at}"

    async def stop(self, grace_s: float | None = None) -> None:
        """Not ready at once; in-flight requests get ``grace_s`` to finish; then close."""
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        await self.health.enter_graceful_shutdown()
        await self.sim.stop(grace)
        if self.server is not None:
            await self.server.stop(min(grace, 1.0))  # engines are stopped; let last replies flush
        if self.openai is not None:
            await self.openai.stop(min(grace, 1.0))
            self.openai = None
        if self.metrics:
            await asyncio.to_thread(self.metrics.close)
            self.metrics = None
        if self.kv_events is not None:
            await self.kv_events.close()
            self.kv_events = None


async def start_server(config: SimulatorConfig, catalog: Catalog | None = None) -> RunningServer:
    """Bind, serve, then load the startup models; returns once the server is ready.

    The gRPC port answers during startup (live, not ready) so a caller can watch loading.
    Raises (after closing what it opened) if a startup model is unknown or does not fit.
    """
    catalog = catalog if catalog is not None else load_catalog(config.catalog_path)
    unknown = [n for n in config.load if catalog.get(n) is None]
    if unknown:
        raise ValueError(f"--load names model(s) not in the catalog {catalog.source}: {unknown}")
    publisher = None
    if config.kv_events_port >= 0:
        publisher = KvEventPublisher(
            config.host, config.kv_events_port, config.kv_events_replay_port,
            config.kv_events_pod, config.kv_events_format,
        )  # fmt: skip
        publisher.start()
    sim = Simulator(
        catalog,
        config.gpu_memory_gb,
        config.time_scale,
        kv_events=publisher.publish if publisher is not None else None,
        kv_hash_seed=config.kv_hash_seed,
    )
    faults = FaultInjector(config.faults, config.fault_seed)
    health_servicer = health.aio.HealthServicer()
    server, port = None, 0
    if config.serves_triton:
        server, port = _grpc_server(sim, config, faults, health_servicer)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if server is not None:
        await server.start()
    running = RunningServer(config, sim, server, health_servicer, port, None, faults, kv_events=publisher)
    try:
        if config.metrics_port >= 0:
            app = build_http_app(build_registry(sim), faults)
            running.metrics = await asyncio.to_thread(MetricsServer, app, config.host, config.metrics_port)
        if config.serves_openai:  # /health answers 503 until the startup loads are done
            api = OpenAIApi(sim, faults, build_vllm_registry(sim)).app()
            running.openai = await start_http_server(api, config.host, config.openai_port, TlsFiles())
        # Live but not ready yet: say where, so a caller can watch the startup.
        log.info("listening %s", running.where())
        if config.startup_delay_s:
            await asyncio.sleep(config.startup_delay_s / config.time_scale)
        await sim.start(config.load, config.preload)
    except BaseException:
        await running.stop(0)
        raise
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return running


def _grpc_server(
    sim: Simulator, config: SimulatorConfig, faults: FaultInjector, health_servicer: health.aio.HealthServicer
) -> tuple[grpc.aio.Server, int]:
    # Triton puts no limit on message sizes; long prompts must not trip grpc's 4 MB default.
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(sim, config, faults), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    return server, server.add_insecure_port(f"{config.host}:{config.port}")
