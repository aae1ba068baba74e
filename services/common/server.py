"""grpc.aio server factory shared by every Harness service.

`start_server` gives a running server with the Harness interceptor, health checking,
reflection, an optional Prometheus /metrics port and TLS; `run_until_signal` serves until
SIGTERM/SIGINT and then stops with a grace period (health goes NOT_SERVING first so Envoy
stops sending new calls).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from services.common.config import ServerConfig, TlsFiles
from services.common.identity import ApiKeyResolver, Authenticator, JwtVerifier
from services.common.interceptors import HarnessServerInterceptor, RpcMetrics

log = logging.getLogger("harness.server")

# Registers servicers on the server; returns the full names of the services it added.
Registrar = Callable[[grpc.aio.Server], Sequence[str]]


def registrar(
    add_to_server: Callable[[object, grpc.aio.Server], None], servicer: object, name: str
) -> Registrar:
    """The Registrar for one generated `add_XServicer_to_server` function and its servicer."""

    def add(server: grpc.aio.Server) -> Sequence[str]:
        add_to_server(servicer, server)
        return [name]

    return add


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(Path(tls.key).read_bytes(), Path(tls.cert).read_bytes())],
        root_certificates=Path(tls.ca).read_bytes(),
        require_client_auth=True,
    )


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=Path(tls.ca).read_bytes(),
        private_key=Path(tls.key).read_bytes(),
        certificate_chain=Path(tls.cert).read_bytes(),
    )


KEEPALIVE_MS = 30_000  # how often a service's channel pings an idle connection
# What a server accepts: pings as often as its peers send them, also on connections whose only
# call is a long-lived Watch stream. gRPC's default (one per 5 minutes without data) answered
# our 30 s pings with GOAWAY "too_many_pings", breaking every Watch stream every few minutes.
SERVER_KEEPALIVE_OPTIONS = [
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
    ("grpc.keepalive_permit_without_calls", 1),
]


def server_options(reuse_port: bool) -> list[tuple[str, int]]:
    """Every Harness gRPC server's channel options (also the bench's TLS relay's, so its floor
    is measured with the router's own settings)."""
    return [
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        *SERVER_KEEPALIVE_OPTIONS,
    ]


def open_channel(target: str, tls: TlsFiles | None = None) -> grpc.aio.Channel:
    """Channel from one Harness service to another, with this service's cert when TLS is on."""
    options = [("grpc.keepalive_time_ms", KEEPALIVE_MS), ("grpc.keepalive_permit_without_calls", 1)]
    if tls is not None and tls.enabled:
        return grpc.aio.secure_channel(target, channel_credentials(tls), options=options)
    return grpc.aio.insecure_channel(target, options=options)


def export_certificate_expiry(registry: CollectorRegistry, cert_path: str) -> None:
    """`harness_tls_certificate_expiry_timestamp_seconds`: when this service's certificate
    stops being valid (Unix time), so an alert fires well before mTLS starts failing."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    Gauge(
        "harness_tls_certificate_expiry_timestamp_seconds",
        "When this service's TLS certificate expires (not-after, Unix time)",
        registry=registry,
    ).set(cert.not_valid_after_utc.timestamp())


@dataclass
class RunningServer:
    config: ServerConfig
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    services: tuple[str, ...]
    metrics_registry: CollectorRegistry
    metrics_port: int | None = None
    _metrics_httpd: object | None = None
    _on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _on_stopping: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    authenticator: Authenticator | None = None
    http_port: int | None = None  # a service's HTTP front door beside gRPC, when it has one

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    def on_stop(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Runs `callback` after the server has stopped taking calls (close stores, flush)."""
        self._on_stop.append(callback)

    def on_stopping(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Runs `callback` when stopping starts, before the grace period: end long-lived streams
        (watches) there, or they hold the shutdown for the whole grace period."""
        self._on_stopping.append(callback)

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.services):
            await self.health.set(name, status)

    def serve_after(self, ready: Callable[[], Awaitable[object]], what: str) -> None:
        """Turns health SERVING once `ready()` returns (start the server with serving=False);
        stopping first cancels the wait, so a stopping server never turns SERVING again."""

        async def wait() -> None:
            await ready()
            await self.set_serving(True)
            log.info("%s: %s; serving", self.config.name, what)

        task = asyncio.create_task(wait(), name=f"{self.config.name}-serve-after")

        async def cancel() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await self.set_serving(False)  # in case it flipped while stopping began

        self._on_stopping.insert(0, cancel)

    async def stop(self, grace: float | None = None) -> None:
        await self.set_serving(False)
        for callback in self._on_stopping:
            try:
                await callback()
            except Exception:
                log.exception("%s: stopping hook failed", self.config.name)
        await self.server.stop(self.config.grace_s if grace is None else grace)
        for callback in reversed(self._on_stop):
            try:
                await callback()
            except Exception:
                log.exception("%s: shutdown hook failed", self.config.name)
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()  # type: ignore[attr-defined]
            self._metrics_httpd.server_close()  # type: ignore[attr-defined]
            self._metrics_httpd = None


async def start_server(
    config: ServerConfig,
    register: Registrar,
    *,
    api_key_resolver: ApiKeyResolver | None = None,
    metrics_registry: CollectorRegistry | None = None,
    serving: bool = True,
) -> RunningServer:
    """Builds, binds and starts a server; health is SERVING when this returns, or NOT_SERVING
    with `serving=False` (the service calls `set_serving(True)` once it can answer)."""
    registry = metrics_registry or CollectorRegistry()
    if config.tls.enabled:
        export_certificate_expiry(registry, config.tls.cert)
    auth = Authenticator(config.auth, JwtVerifier.from_config(config.auth), api_key_resolver)
    server = grpc.aio.server(
        interceptors=[HarnessServerInterceptor(auth, RpcMetrics(registry, config.name))],
        options=server_options(config.reuse_port),
    )
    services = tuple(register(server))
    health_servicer = health.aio.HealthServicer()
    if not serving:  # the servicer says SERVING for "" until told otherwise
        await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*services, *config.reflection_extra, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{config.host}:{config.port}"
    if config.tls.enabled:
        port = server.add_secure_port(address, server_credentials(config.tls))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"{config.name}: cannot listen on {address} (port in use?)")
    await server.start()
    running = RunningServer(config, server, port, health_servicer, services, registry, authenticator=auth)
    if config.metrics_port is not None:
        httpd, _thread = start_http_server(config.metrics_port, addr=config.host, registry=registry)
        running._metrics_httpd = httpd
        running.metrics_port = httpd.server_port
    await running.set_serving(serving)
    log.info(
        "%s serving on %s (%s), metrics on %s",
        config.name,
        running.address,
        "mTLS" if config.tls.enabled else "plaintext",
        running.metrics_port,
    )
    return running


async def start_server_owning(
    config: ServerConfig,
    register: Registrar,
    close: Callable[[], Awaitable[None]],
    *,
    metrics_registry: CollectorRegistry | None = None,
    api_key_resolver: ApiKeyResolver | None = None,
) -> RunningServer:
    """start_server for a service that owns a resource (a store): `close` runs if the start fails,
    else when the server stops."""
    try:
        running = await start_server(
            config, register, api_key_resolver=api_key_resolver, metrics_registry=metrics_registry
        )
    except BaseException:
        await close()
        raise
    running.on_stop(close)
    return running


async def run_until_signal(running: RunningServer) -> None:
    """Serves until SIGTERM or SIGINT, then stops with the configured grace period."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("%s: stopping (grace %.1fs)", running.config.name, running.config.grace_s)
    await running.stop()


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
