"""Router service: `python -m services.router`."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass

from harness.audit.v1 import audit_pb2
from harness.cost.v1 import cost_pb2
from harness.pool.v1 import pool_pb2
from harness.registry.v1 import registry_pb2
from harness.router.v1 import router_pb2, router_pb2_grpc
from tritonclient.grpc import service_pb2_grpc

from services.common.config import ServerConfig, TlsFiles, add_server_args, env, server_config_from_args
from services.common.server import RunningServer, open_channel, run_until_signal, setup_logging, start_server
from services.router.core import Router
from services.router.events import EventShipper
from services.router.registry_mirror import RegistryMirror
from services.router.servicer import RouterServicer
from services.router.triton import TritonPool
from services.router.triton_facade import TritonFacadeServicer
from services.router.views import EndpointView

# The router is the front door's reflection target: it lists the whole mesh API.
MESH_SERVICES = tuple(
    m.DESCRIPTOR.services_by_name[name].full_name
    for m, name in (
        (registry_pb2, "Registry"),
        (pool_pb2, "Pool"),
        (audit_pb2, "Audit"),
        (cost_pb2, "Cost"),
    )
)


@dataclass(frozen=True)
class RouterConfig:
    server: ServerConfig
    registry_addr: str
    pool_addr: str
    audit_addr: str
    cost_addr: str
    cache_ttl_s: float = 5.0
    endpoint_refresh_s: float = 0.5
    default_max_tokens: int = 256


def parse_args(argv: list[str] | None = None) -> RouterConfig:
    p = argparse.ArgumentParser(prog="harness-router", description=__doc__)
    add_server_args(p, default_port=50061, default_metrics=9461)
    p.add_argument("--registry", default=env("REGISTRY_ADDR", "127.0.0.1:50071"))
    p.add_argument("--pool", default=env("POOL_ADDR", "127.0.0.1:50081"))
    p.add_argument("--audit", default=env("AUDIT_ADDR", "127.0.0.1:50091"))
    p.add_argument("--cost", default=env("COST_ADDR", "127.0.0.1:50101"))
    p.add_argument(
        "--cache-ttl",
        type=float,
        default=float(env("ROUTER_CACHE_TTL_S", "5")),
        help="seconds a resolved API key is cached (agents, models and rules follow the registry watch)",
    )
    p.add_argument("--default-max-tokens", type=int, default=int(env("ROUTER_DEFAULT_MAX_TOKENS", "256")))
    a = p.parse_args(argv)
    setup_logging(a.log_level)
    return RouterConfig(
        server=server_config_from_args("router", a, reflection_extra=MESH_SERVICES),
        registry_addr=a.registry,
        pool_addr=a.pool,
        audit_addr=a.audit,
        cost_addr=a.cost,
        cache_ttl_s=a.cache_ttl,
        default_max_tokens=a.default_max_tokens,
    )


async def start_router(cfg: RouterConfig, client_tls: TlsFiles | None = None) -> RunningServer:
    """Starts the router and its background views; `client_tls` defaults to the server's cert."""
    tls = client_tls if client_tls is not None else cfg.server.tls
    channels = {
        name: open_channel(addr, tls)
        for name, addr in (
            ("registry", cfg.registry_addr),
            ("pool", cfg.pool_addr),
            ("audit", cfg.audit_addr),
            ("cost", cfg.cost_addr),
        )
    }
    registry = RegistryMirror(channels["registry"], api_key_ttl_s=cfg.cache_ttl_s)
    endpoints = EndpointView(channels["pool"], cfg.endpoint_refresh_s)
    triton = TritonPool()
    holder: dict[str, EventShipper] = {}

    def register(server) -> list[str]:
        router_pb2_grpc.add_RouterServicer_to_server(RouterServicer(router), server)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(TritonFacadeServicer(router), server)
        return [router_pb2.DESCRIPTOR.services_by_name["Router"].full_name, "inference.GRPCInferenceService"]

    from prometheus_client import CollectorRegistry

    metrics = CollectorRegistry()
    holder["events"] = EventShipper(channels["audit"], channels["cost"], metrics)
    router = Router(registry, endpoints, triton, holder["events"], cfg.default_max_tokens)
    running = await start_server(
        cfg.server, register, api_key_resolver=registry.resolve_api_key, metrics_registry=metrics
    )
    registry.start()
    endpoints.start()
    holder["events"].start()

    async def shutdown() -> None:
        await registry.stop()
        await endpoints.stop()
        await holder["events"].drain(timeout=cfg.server.grace_s)
        await triton.close()
        for ch in channels.values():
            await ch.close()

    running.on_stop(shutdown)
    return running


async def amain(cfg: RouterConfig) -> None:
    running = await start_router(cfg)
    await run_until_signal(running)


def main(argv: list[str] | None = None) -> None:
    asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    main()
