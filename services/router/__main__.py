"""Router service: `python -m services.router`."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys

from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from harness.audit.v1 import audit_pb2_grpc
from harness.registry.v1 import registry_pb2_grpc
from harness.router.v1 import router_pb2, router_pb2_grpc
from prometheus_client import CollectorRegistry
from starlette.routing import Route
from tritonclient.grpc import service_pb2_grpc

from services.common.config import TlsFiles
from services.common.http_server import start_http_server
from services.common.jwt_settings import follow_jwt_settings
from services.common.mirror_metrics import register_mirror_metrics
from services.common.registry_mirror import RegistryMirror
from services.common.server import RunningServer, open_channel, run_until_signal, start_server
from services.router.activation import ActivationMetrics, Activator, pool_activate
from services.router.agent_metrics import register_agent_metrics
from services.router.budgets import BudgetEnforcer, MemoryBudgets, RedisBudgets
from services.router.budgets.follower import CostFollower
from services.router.budgets.metrics import register_budget_metrics
from services.router.config import RouterConfig, parse_args
from services.router.core import Router, RouterPolicy
from services.router.dispatch import Dispatcher
from services.router.engine_access import NO_ACCESS, EndpointAccess
from services.router.events import EventShipper
from services.router.extproc.servicer import ExtProcServicer
from services.router.flow import FlowController, MemoryRateLimiter, RateLimiter, RedisRateLimiter, SloClass
from services.router.kv_events import EVENTS_LABEL, REPLAY_LABEL, KvEventFollower
from services.router.kv_events_metrics import register_kv_event_metrics
from services.router.mcp_front import PATH as MCP_PATH
from services.router.mcp_front import McpFrontDoor
from services.router.metrics import RouterMetrics, export_queue_depth
from services.router.openai_engine import OpenAIEngine
from services.router.openai_http.app import OpenAIFrontDoor
from services.router.outbox import Outbox
from services.router.result_cache import MemoryResultCache, RedisResultCache, ResultCache
from services.router.scheduling import Scheduler, load_config
from services.router.servicer import RouterServicer
from services.router.tool_upstream import Credentials, reveal_from
from services.router.tools import AuditApprovals, ToolInvoker
from services.router.triton import TritonPool
from services.router.triton_facade import TritonFacadeServicer
from services.router.views import EndpointView
from services.router.workers import supervise

log = logging.getLogger("harness.router")


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
    # Engines that publish KV events (pool labels kv-events, kv-events-replay) are followed by
    # this process into the precise prefix scorer's index.
    kv_follower = KvEventFollower(scheduler.memory.engine_blocks)

    def pool_changed() -> None:
        flow.capacity_changed()
        kv_follower.sync(endpoints.kv_event_sources(EVENTS_LABEL, REPLAY_LABEL))

    endpoints = EndpointView(
        channels["pool"],
        cfg.endpoint_refresh_s,
        on_change=pool_changed,
        own_inflight=scheduler.memory.own,
    )
    access = dict(cfg.engine_access)

    def reach(address: str) -> EndpointAccess:
        return access.get(address, NO_ACCESS)

    triton, openai_engine = TritonPool(reach), OpenAIEngine(reach)
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
    register_kv_event_metrics(metrics, kv_follower)
    export_queue_depth(
        metrics, lambda name: flow.queued(SloClass[name.upper()]), [c.name.lower() for c in SloClass]
    )
    events = EventShipper(
        channels["audit"],
        channels["cost"],
        metrics,
        Outbox(cfg.outbox_path or f".harness/state/router-{cfg.server.port}-outbox.db"),
        fail_closed=cfg.outbox_fail_closed,
        linger_s=cfg.event_linger_s,
    )
    activator = Activator(
        endpoints, pool_activate(channels["pool"]), cfg.activation_wait_s, ActivationMetrics(metrics)
    )
    cost_follower = CostFollower(channels["cost"], budgets, cfg.budget_refresh_s)
    router = Router(
        registry,
        endpoints,
        Dispatcher(endpoints, scheduler, flow, triton, openai=openai_engine, activator=activator),
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
        credentials=Credentials(reveal_from(registry_pb2_grpc.RegistryStub(channels["registry"]))),
        metrics=router.metrics,  # denials and stage failures count with the model path's
    )

    def register(server) -> list[str]:
        router_pb2_grpc.add_RouterServicer_to_server(RouterServicer(router, tools), server)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            TritonFacadeServicer(router, decoupled=triton.decoupled), server
        )
        # Envoy's ext_proc endpoint picker (extproc/): answers Envoy's own certificate only.
        ep_grpc.add_ExternalProcessorServicer_to_server(
            ExtProcServicer(router, lambda: running.authenticator if running else None), server
        )
        return [router_pb2.DESCRIPTOR.services_by_name["Router"].full_name, "inference.GRPCInferenceService"]

    running: RunningServer | None = None
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
        await kv_follower.close()
        await activator.close()
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
            app, cfg.server.host, cfg.http_port or 0, cfg.server.tls, reuse_port=cfg.server.reuse_port,
            coalesce_writes=True,  # a streamed answer's events that come together: one TLS record
        )  # fmt: skip
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


def tune_gc(young_threshold: int) -> None:
    """Sets the young generation's threshold (0: Python's default stays); the older
    generations' stay, so a full collection still comes every hundred young ones."""
    if young_threshold:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young_threshold, middle, old)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_args(argv)
    if cfg.workers > 1:
        s = cfg.server
        supervise(
            argv, cfg.workers, s.host, s.port, s.metrics_port, cfg.http_port, cfg.outbox_path, s.grace_s
        )
        return
    tune_gc(cfg.gc_young_threshold)
    asyncio.run(amain(cfg))


if __name__ == "__main__":
    main()
