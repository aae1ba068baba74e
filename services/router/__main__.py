"""Router service: `python -m services.router`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.audit.v1 import audit_pb2, audit_pb2_grpc
from harness.cost.v1 import cost_pb2
from harness.pool.v1 import pool_pb2
from harness.registry.v1 import registry_pb2
from harness.router.v1 import router_pb2, router_pb2_grpc
from prometheus_client import CollectorRegistry
from starlette.routing import Route
from tritonclient.grpc import service_pb2_grpc

from services.common.config import ServerConfig, TlsFiles, add_server_args, env, server_config_from_args
from services.common.http_server import start_http_server
from services.common.jwt_settings import follow_jwt_settings
from services.common.mirror_metrics import register_mirror_metrics
from services.common.registry_mirror import RegistryMirror
from services.common.server import RunningServer, open_channel, run_until_signal, setup_logging, start_server
from services.router.agent_metrics import register_agent_metrics
from services.router.budgets import BudgetEnforcer, MemoryBudgets, RedisBudgets
from services.router.budgets.follower import CostFollower
from services.router.budgets.metrics import register_budget_metrics
from services.router.core import Router, RouterPolicy
from services.router.dispatch import Dispatcher
from services.router.events import EventShipper
from services.router.flow import FlowController, MemoryRateLimiter, RateLimiter, RedisRateLimiter
from services.router.mcp_front import PATH as MCP_PATH
from services.router.mcp_front import McpFrontDoor
from services.router.metrics import RouterMetrics
from services.router.openai_engine import NO_ACCESS, EndpointAccess, OpenAIEngine, parse_engine_access
from services.router.openai_http.app import OpenAIFrontDoor
from services.router.outbox import Outbox
from services.router.result_cache import MemoryResultCache, RedisResultCache, ResultCache
from services.router.scheduling import Scheduler, load_config
from services.router.servicer import RouterServicer
from services.router.tools import AuditApprovals, ToolInvoker
from services.router.triton import TritonPool
from services.router.triton_facade import TritonFacadeServicer
from services.router.views import EndpointView
from services.router.workers import default_workers, supervise

log = logging.getLogger("harness.router")

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
    api_key_ttl_s: float = 5.0
    endpoint_refresh_s: float = 0.5
    default_max_tokens: int = 256
    result_cache_ttl_s: float = 300.0  # 0 disables the result cache
    redaction_workers: int = 1  # processes that redact large inputs off the event loop
    redis_url: str = ""  # shared rate limits, result cache and budgets; "" keeps them in this process
    redis_prefix: str = "harness:"  # key prefix: routers sharing counters use the same one
    redis_timeout_s: float = 0.25  # bound of every Redis call (budgets, rate limits, result cache)
    # Redis not answering: budgets fail open (each router enforces its local share of every
    # budget, so spend stays bounded) or closed (budgeted requests get UNAVAILABLE).
    budget_fail_open: bool = True
    budget_local_share: float = 0.5  # <= 1 / number of routers keeps an outage within the limit
    scheduler_profiles: str = ""  # YAML of scheduling profiles; "" = the packaged default
    # Durable audit/usage events (SQLite WAL), one file per router process; "" = under
    # .harness/state/, named by the port.
    outbox_path: str = ""
    outbox_fail_closed: bool = False  # refuse requests when events cannot be made durable
    redaction_key: str = ""  # HMAC key for HASH-mode PII redaction; the same on every router
    budget_timezone: str = "UTC"  # the cost service's timezone (calendar budget periods)
    budget_refresh_s: float = 5.0  # how often budgets and prices are read from the cost service
    # A reservation never settled (router crashed) expires after this; after Redis lost its
    # data, budgeted requests pause this long so invisible in-flight reservations settle first.
    budget_reservation_ttl_s: float = 30.0
    http_port: int | None = None  # the OpenAI-compatible HTTP API (0: any free port; None: off)
    workers: int = 1  # > 1: this process supervises that many router processes on one port
    # Per OpenAI-protocol endpoint (its address as the pool reports it): headers such as an API
    # key and TLS roots. Secrets: never in the pool's endpoint table, so each router has its own.
    engine_access: tuple[tuple[str, EndpointAccess], ...] = ()


def parse_args(argv: list[str] | None = None) -> RouterConfig:
    p = argparse.ArgumentParser(prog="harness-router", description=__doc__)
    add_server_args(p, default_port=50061, default_metrics=9461)
    p.add_argument("--registry", default=env("REGISTRY_ADDR", "127.0.0.1:50071"))
    p.add_argument("--pool", default=env("POOL_ADDR", "127.0.0.1:50081"))
    p.add_argument("--audit", default=env("AUDIT_ADDR", "127.0.0.1:50091"))
    p.add_argument("--cost", default=env("COST_ADDR", "127.0.0.1:50101"))
    p.add_argument(
        "--api-key-ttl",
        type=float,
        default=float(env("ROUTER_API_KEY_TTL_S", "5")),
        help="seconds a resolved API key is cached (agents, models and rules follow the registry watch)",
    )
    p.add_argument(
        "--result-cache-ttl",
        type=float,
        default=float(env("ROUTER_RESULT_CACHE_TTL_S", "300")),
        help="seconds a deterministic result is cached (0: no result cache)",
    )
    p.add_argument(
        "--redaction-workers",
        type=int,
        default=int(env("ROUTER_REDACTION_WORKERS", "1")),
        help="worker processes that redact large prompts and tool data off the event loop (started on first use)",
    )
    p.add_argument(
        "--redis",
        default=env("REDIS_URL", ""),
        help="Redis URL for rate limits and the result cache, shared by all routers (default: in memory)",
    )
    p.add_argument(
        "--redis-prefix",
        default=env("REDIS_PREFIX", "harness:"),
        help="prefix of this deployment's Redis keys (the same on every router replica)",
    )
    p.add_argument(
        "--redis-timeout",
        type=float,
        default=float(env("ROUTER_REDIS_TIMEOUT_S", "0.25")),
        help="seconds any Redis call (budgets, rate limits, result cache) may take before it counts as failed",
    )
    p.add_argument(
        "--budget-on-redis-failure",
        choices=("open", "closed"),
        default=env("ROUTER_BUDGET_ON_REDIS_FAILURE", "open"),
        help="when Redis does not answer: 'open' = this router enforces its local share of each budget "
        "(--budget-local-share), 'closed' = budgeted requests get UNAVAILABLE (default %(default)s)",
    )
    p.add_argument(
        "--budget-local-share",
        type=float,
        default=float(env("ROUTER_BUDGET_LOCAL_SHARE", "0.5")),
        help="fraction of each budget (and of its spend so far) one router may use on its own while Redis is "
        "down; 1/number of routers keeps an outage within the limit (default %(default)s)",
    )
    p.add_argument(
        "--budget-refresh",
        type=float,
        default=float(env("ROUTER_BUDGET_REFRESH_S", "5")),
        help="seconds between reads of budgets and prices from the cost service",
    )
    p.add_argument(
        "--budget-reservation-ttl",
        type=float,
        default=float(env("ROUTER_BUDGET_RESERVATION_TTL_S", "30")),
        help="seconds an unsettled budget reservation lives unless its router renews it (every third of "
        "this), so a dead router's reservations free their budgets within it; also how long budgets "
        "pause after Redis lost its data, while every router registers its in-flight reservations again",
    )
    p.add_argument(
        "--outbox",
        default=env("ROUTER_OUTBOX", ""),
        help="SQLite file of the durable event outbox, one per router process "
        "(default .harness/state/router-<port>-outbox.db; ':memory:' = not durable)",
    )
    p.add_argument(
        "--outbox-fail-closed",
        action="store_true",
        default=env("ROUTER_OUTBOX_FAIL_CLOSED", "") == "1",
        help="refuse requests while audit/usage events cannot be made durable (default: serve and log)",
    )
    p.add_argument(
        "--redaction-key-file",
        default=env("REDACTION_KEY_FILE", ""),
        help="file holding the HMAC key for hash-mode PII redaction (the same on every router replica)",
    )
    p.add_argument(
        "--scheduler-profiles",
        default=env("ROUTER_SCHEDULER_PROFILES", ""),
        help="YAML file of scheduling profiles (default: services/router/scheduling/profiles.yaml)",
    )
    p.add_argument(
        "--budget-timezone",
        default=env("COST_TIMEZONE", "UTC"),
        help="IANA timezone of budget periods; the same as the cost service's (env HARNESS_COST_TIMEZONE)",
    )
    p.add_argument(
        "--http-port",
        type=int,
        default=int(env("ROUTER_HTTP_PORT", "50063")),
        help="port of the OpenAI-compatible HTTP API (/v1/*), with the gRPC port's TLS; -1: off",
    )
    p.add_argument("--default-max-tokens", type=int, default=int(env("ROUTER_DEFAULT_MAX_TOKENS", "256")))
    p.add_argument(
        "--workers",
        type=int,
        default=int(env("ROUTER_WORKERS", "0")),
        help="router processes sharing the port (SO_REUSEPORT); 0: every core with --redis, else 1",
    )
    p.add_argument("--worker-index", type=int, default=-1, help=argparse.SUPPRESS)  # set by the supervisor
    p.add_argument(
        "--engine-access",
        action="append",
        default=[],
        metavar="BASE_URL,header.K=V[,ca=PATH]",
        help="headers (e.g. an API key) and TLS roots for an OpenAI-protocol engine; repeatable",
    )
    a = p.parse_args(argv)
    try:
        engine_access = tuple(parse_engine_access(v) for v in a.engine_access)
    except ValueError as exc:
        p.error(str(exc))
    setup_logging(a.log_level)
    worker = a.worker_index >= 0
    return RouterConfig(
        server=server_config_from_args("router", a, reflection_extra=MESH_SERVICES, reuse_port=worker),
        workers=1 if worker else max(0, a.workers) or default_workers(a.redis),
        registry_addr=a.registry,
        pool_addr=a.pool,
        audit_addr=a.audit,
        cost_addr=a.cost,
        api_key_ttl_s=a.api_key_ttl,
        default_max_tokens=a.default_max_tokens,
        result_cache_ttl_s=a.result_cache_ttl,
        redaction_workers=max(1, a.redaction_workers),
        redis_url=a.redis,
        redis_prefix=a.redis_prefix,
        redis_timeout_s=a.redis_timeout,
        budget_fail_open=a.budget_on_redis_failure == "open",
        budget_local_share=a.budget_local_share,
        budget_refresh_s=a.budget_refresh,
        budget_reservation_ttl_s=a.budget_reservation_ttl,
        scheduler_profiles=a.scheduler_profiles,
        outbox_path=a.outbox,
        outbox_fail_closed=a.outbox_fail_closed,
        redaction_key=Path(a.redaction_key_file).read_text().strip() if a.redaction_key_file else "",
        budget_timezone=a.budget_timezone,
        http_port=a.http_port if a.http_port >= 0 else None,
        engine_access=engine_access,
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
    registry = RegistryMirror(channels["registry"], api_key_ttl_s=cfg.api_key_ttl_s)
    flow = FlowController()
    # A pool change may free capacity: let queued requests re-check their endpoints.
    scheduler = Scheduler(load_config(cfg.scheduler_profiles or None))
    endpoints = EndpointView(
        channels["pool"],
        cfg.endpoint_refresh_s,
        on_change=flow.capacity_changed,
        own_inflight=scheduler.memory.own,
    )
    access = dict(cfg.engine_access)
    triton, openai_engine = TritonPool(), OpenAIEngine(lambda address: access.get(address, NO_ACCESS))
    if cfg.redis_url:
        limiter: RateLimiter = RedisRateLimiter.from_url(
            cfg.redis_url, cfg.redis_prefix, timeout_s=cfg.redis_timeout_s,
            fail_open=cfg.budget_fail_open, local_share=cfg.budget_local_share,
        )  # fmt: skip
        cache: ResultCache = RedisResultCache.from_url(cfg.redis_url, cfg.redis_prefix, cfg.redis_timeout_s)
        budgets: BudgetEnforcer = RedisBudgets.from_url(
            cfg.redis_url,
            cfg.redis_prefix,
            timeout_s=cfg.redis_timeout_s,
            fail_open=cfg.budget_fail_open,
            local_share=cfg.budget_local_share,
            timezone=cfg.budget_timezone,
            reservation_ttl_s=cfg.budget_reservation_ttl_s,
        )
    else:
        limiter, cache = MemoryRateLimiter(), MemoryResultCache()
        budgets = MemoryBudgets(timezone=cfg.budget_timezone, reservation_ttl_s=cfg.budget_reservation_ttl_s)
    metrics = CollectorRegistry()
    register_budget_metrics(metrics, budgets)
    register_mirror_metrics(metrics, registry)
    register_agent_metrics(metrics, registry)
    events = EventShipper(
        channels["audit"],
        channels["cost"],
        metrics,
        Outbox(cfg.outbox_path or f".harness/state/router-{cfg.server.port}-outbox.db"),
        fail_closed=cfg.outbox_fail_closed,
    )
    cost_follower = CostFollower(channels["cost"], budgets, cfg.budget_refresh_s)
    router = Router(
        registry,
        endpoints,
        Dispatcher(endpoints, scheduler, flow, triton, openai=openai_engine),
        events,
        limiter,
        cache,
        RouterMetrics(metrics),
        RouterPolicy(
            default_max_tokens=cfg.default_max_tokens,
            cache_ttl_s=cfg.result_cache_ttl_s,
            redaction_workers=cfg.redaction_workers,
            redaction_key=cfg.redaction_key,
        ),
        budgets=budgets,
    )

    tools = ToolInvoker(
        registry,
        events,
        router.redactors,
        AuditApprovals(audit_pb2_grpc.AuditStub(channels["audit"])),
        cache,
        budgets=budgets,
        keys=router.cache.keys,  # keyed with the redaction key: the same on every replica
    )

    def register(server) -> list[str]:
        router_pb2_grpc.add_RouterServicer_to_server(RouterServicer(router, tools), server)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            TritonFacadeServicer(router, decoupled=triton.decoupled), server
        )
        return [router_pb2.DESCRIPTOR.services_by_name["Router"].full_name, "inference.GRPCInferenceService"]

    # NOT_SERVING until the first registry copy arrives: without it every call would fail
    # UNAVAILABLE, so Envoy must send traffic to another router meanwhile.
    running = await start_server(
        cfg.server,
        register,
        api_key_resolver=registry.resolve_api_key,
        metrics_registry=metrics,
        serving=False,
    )
    if running.authenticator is not None:
        # While set, the registry's JWT settings replace the flags: rotating keys or moving to
        # another identity provider is a registry change, not a router restart.
        follow_jwt_settings(registry, running.authenticator, cfg.server.auth)
    registry.start()

    running.serve_after(lambda: registry.wait_ready(timeout=None), "holds a copy of the registry")
    endpoints.start()
    events.start()
    cost_follower.start()
    budgets.start()

    async def shutdown() -> None:
        await registry.stop()
        await endpoints.stop()
        await cost_follower.stop()
        await events.drain(timeout=cfg.server.grace_s)
        await triton.close()
        await openai_engine.close()
        router.redactors.close()
        await limiter.aclose()
        await budgets.aclose()
        if isinstance(cache, RedisResultCache):
            await cache.aclose()
        for ch in channels.values():
            await ch.close()

    running.on_stop(shutdown)
    if cfg.http_port is not None:
        await _serve_http(cfg, running, router, tools, metrics)
    return running


async def _serve_http(
    cfg: RouterConfig, running: RunningServer, router: Router, tools: ToolInvoker, metrics
) -> None:
    """The OpenAI HTTP API and the MCP endpoint (/mcp) on their own port, same loop, TLS and
    authenticator as gRPC."""
    assert running.authenticator is not None
    front = OpenAIFrontDoor(router, running.authenticator, metrics)
    front.ready = lambda: router.registry.ready  # 503 until the first registry copy, as gRPC health
    mcp = McpFrontDoor(tools, running.authenticator)
    try:
        await mcp.start()
        app = front.app([Route(MCP_PATH, mcp)])
        http = await start_http_server(
            app, cfg.server.host, cfg.http_port or 0, cfg.server.tls, reuse_port=cfg.server.reuse_port
        )
    except BaseException:
        await mcp.stop()
        await running.stop(0)
        raise
    running.http_port = http.port
    stopped: list[asyncio.Task] = []

    async def stopping() -> None:
        front.serving = False  # health fails first; requests in flight finish in the grace period
        stopped.append(asyncio.create_task(http.stop(cfg.server.grace_s)))

    async def stop() -> None:
        if stopped:
            await stopped[0]
        else:
            await http.stop(0)
        await mcp.stop()

    running.on_stopping(stopping)
    running.on_stop(stop)


async def amain(cfg: RouterConfig) -> None:
    running = await start_router(cfg)
    await run_until_signal(running)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_args(argv)
    if cfg.workers > 1:
        s = cfg.server
        supervise(
            argv, cfg.workers, s.host, s.port, s.metrics_port, cfg.http_port, cfg.outbox_path, s.grace_s
        )
        return
    asyncio.run(amain(cfg))


if __name__ == "__main__":
    main()
