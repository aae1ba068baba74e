"""A tiny in-process Triton for pool tests: ServerReady, RepositoryIndex, grpc health, /metrics.

Tests set `models`, `loads`, `gpu` and `ready` directly and the next probe sees them. `stop()`
/ `start()` take the gRPC side down and back up on the same port (metrics stay up, so tests
also show that metrics alone never keep an endpoint healthy).

    fake = FakeTriton({"llama": "READY"})
    await fake.start()
    ... fake.address, fake.metrics_url ...
    await fake.close()
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from tritonclient.grpc import service_pb2, service_pb2_grpc

GIB = 1 << 30


class _Inference(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, fake: FakeTriton) -> None:
        self._fake = fake

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self._fake.ready)

    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=self._fake.models.get(request.name) == "READY")

    async def RepositoryIndex(self, request, context):
        header = self._fake.repository_header
        if header and (header[0], header[1]) not in tuple(context.invocation_metadata() or ()):
            # What a Triton with a restricted repository protocol answers.
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"This protocol is restricted, expecting header '{header[0]}'",
            )
        entries = [
            service_pb2.RepositoryIndexResponse.ModelIndex(name=n, version="1", state=s)
            for n, s in sorted(self._fake.models.items())
            if not request.ready or s == "READY"
        ]
        return service_pb2.RepositoryIndexResponse(models=entries)


class _Health(health_pb2_grpc.HealthServicer):
    def __init__(self, fake: FakeTriton) -> None:
        self._fake = fake

    async def Check(self, request, context):
        serving = health_pb2.HealthCheckResponse.SERVING
        return health_pb2.HealthCheckResponse(
            status=serving if self._fake.ready else health_pb2.HealthCheckResponse.NOT_SERVING
        )


class _Collector:
    def __init__(self, fake: FakeTriton) -> None:
        self._fake = fake

    def collect(self) -> Iterator[Metric]:
        req = GaugeMetricFamily(
            "nv_trt_llm_request_metrics",
            "TRT LLM request metrics",
            labels=["model", "version", "request_type"],
        )
        kv = GaugeMetricFamily(
            "nv_trt_llm_kv_cache_block_metrics",
            "TRT LLM KV cache block metrics",
            labels=["model", "version", "kv_cache_block_type"],
        )
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count", "pending", labels=["model", "version"]
        )
        for name, (active, waiting, fraction) in sorted(self._fake.loads.items()):
            req.add_metric([name, "1", "active"], active)
            req.add_metric([name, "1", "waiting"], waiting)
            kv.add_metric([name, "1", "fraction"], fraction)
            pending.add_metric([name, "1"], waiting)
        total, used, util = self._fake.gpu
        gpu_total = GaugeMetricFamily("nv_gpu_memory_total_bytes", "total", labels=["gpu_uuid"])
        gpu_used = GaugeMetricFamily("nv_gpu_memory_used_bytes", "used", labels=["gpu_uuid"])
        gpu_util = GaugeMetricFamily("nv_gpu_utilization", "util", labels=["gpu_uuid"])
        gpu_total.add_metric(["GPU-fake-0"], total)
        gpu_used.add_metric(["GPU-fake-0"], used)
        gpu_util.add_metric(["GPU-fake-0"], util)
        yield from (req, kv, pending, gpu_total, gpu_used, gpu_util)


class FakeTriton:
    def __init__(self, models: dict[str, str] | None = None) -> None:
        self.models: dict[str, str] = dict(models if models is not None else {"llama": "READY"})
        self.loads: dict[str, tuple[int, int, float]] = {}  # model -> (active, waiting, kv fraction)
        self.gpu: tuple[int, int, float] = (80 * GIB, 20 * GIB, 0.25)  # total, used, utilisation
        self.ready = True
        self.repository_header: tuple[str, str] | None = None  # (key, value) RepositoryIndex needs
        self.tls: tuple[bytes, bytes] | None = None  # (key PEM, cert PEM) to serve TLS
        self.port = 0
        self._server: grpc.aio.Server | None = None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        self._httpd, self._thread = start_http_server(0, addr="127.0.0.1", registry=registry)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}/metrics"

    async def start(self) -> None:
        """Serves gRPC on a free port the first time, on the same port after a stop()."""
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_Inference(self), server)
        health_pb2_grpc.add_HealthServicer_to_server(_Health(self), server)
        address = f"127.0.0.1:{self.port}"
        if self.tls is not None:  # (key PEM, cert PEM): server-side TLS, as a Triton with --grpc-use-ssl
            port = server.add_secure_port(address, grpc.ssl_server_credentials([self.tls]))
        else:
            port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"fake triton cannot bind 127.0.0.1:{self.port}")
        await server.start()
        self.port, self._server = port, server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None

    async def close(self) -> None:
        await self.stop()
        await asyncio.to_thread(self._httpd.shutdown)
        self._httpd.server_close()
