"""The router's one frozen config, built from flags and HARNESS_* environment variables."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from harness.audit.v1 import audit_pb2
from harness.cost.v1 import cost_pb2
from harness.pool.v1 import pool_pb2
from harness.registry.v1 import registry_pb2

from services.common.config import ServerConfig, add_server_args, env, server_config_from_args
from services.common.server import setup_logging
from services.router.engine_access import EndpointAccess, parse_engine_access
from services.router.workers import workers_for

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
    # How long a request for a model the pool scaled to zero is held while it wakes (bounded by
    # the request's own deadline too); 0 refuses it at once (UNAVAILABLE), as before.
    activation_wait_s: float = 120.0
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
    # How long events wait in the outbox before a batch ships: one Audit.Ingest / Cost.Record
    # call (and one signed audit checkpoint) carries every event of that window.
    event_linger_s: float = 0.25
    # Allocations between young-generation garbage collections (Python's default: 700; 0 keeps
    # it). A call allocates thousands of short-lived objects, so at 700 the collector runs
    # several times per call and, every hundred runs, walks the whole heap.
    gc_young_threshold: int = 20_000
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


def _add_mesh_args(p: argparse.ArgumentParser) -> None:
    """Where the router listens and what it calls; caches and front doors."""
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
        "--activation-wait-s",
        type=float,
        default=float(env("ROUTER_ACTIVATION_WAIT_S", "120")),
        help="seconds a request for a model scaled to zero waits while the pool loads it "
        "(bounded by the request's deadline; 0: refuse it at once)",
    )
    p.add_argument(
        "--redaction-workers",
        type=int,
        default=int(env("ROUTER_REDACTION_WORKERS", "1")),
        help="worker processes that redact large prompts and tool data off the event loop (started on first use)",
    )


def _add_state_args(p: argparse.ArgumentParser) -> None:
    """Shared state (Redis), budgets, the outbox, redaction and workers."""
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
        "--event-linger",
        type=float,
        default=float(env("ROUTER_EVENT_LINGER_S", "0.25")),
        help="seconds audit/usage events wait before a batch ships to the audit and cost services "
        "(default 0.25): longer means fewer, larger batches (less CPU there per request), later records",
    )
    p.add_argument(
        "--gc-young-threshold",
        type=int,
        default=int(env("ROUTER_GC_YOUNG_THRESHOLD", "20000")),
        help="allocations between young-generation garbage collections (default 20000; Python's "
        "own is 700; 0 keeps Python's)",
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
        default=int(env("ROUTER_WORKERS", "1")),
        help="router processes sharing the port (SO_REUSEPORT); 0: every core with --redis, else 1",
    )
    p.add_argument("--worker-index", type=int, default=-1, help=argparse.SUPPRESS)  # set by the supervisor
    p.add_argument(
        "--engine-access",
        action="append",
        default=[],
        metavar="ADDRESS,header.K=V[,ca=PATH][,tls=true]",
        help="headers (an API key, a Triton access token) and TLS for one engine: an OpenAI server's "
        "base URL or a Triton's HOST:PORT as the pool lists it; repeatable",
    )


def parse_args(argv: list[str] | None = None) -> RouterConfig:
    p = argparse.ArgumentParser(
        prog="harness-router", description="Harness router: the request path for every front door"
    )
    _add_mesh_args(p)
    _add_state_args(p)
    a = p.parse_args(argv)
    if not 0 <= a.event_linger <= 60:
        p.error(f"--event-linger {a.event_linger:g}: use 0 to 60 seconds")
    if a.gc_young_threshold != 0 and not 100 <= a.gc_young_threshold <= 1_000_000:
        p.error(f"--gc-young-threshold {a.gc_young_threshold}: use 0 (Python's default) or 100 to 1000000")
    if not 0 <= a.activation_wait_s <= 3600:
        p.error(f"--activation-wait-s {a.activation_wait_s:g}: use 0 to 3600 seconds")
    try:
        engine_access = tuple(parse_engine_access(v) for v in a.engine_access)
    except ValueError as exc:
        p.error(str(exc))
    setup_logging(a.log_level)
    worker = a.worker_index >= 0
    return RouterConfig(
        server=server_config_from_args("router", a, reflection_extra=MESH_SERVICES, reuse_port=worker),
        workers=1 if worker else workers_for(a.workers, a.redis),
        registry_addr=a.registry,
        pool_addr=a.pool,
        audit_addr=a.audit,
        cost_addr=a.cost,
        api_key_ttl_s=a.api_key_ttl,
        default_max_tokens=a.default_max_tokens,
        result_cache_ttl_s=a.result_cache_ttl,
        activation_wait_s=a.activation_wait_s,
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
        event_linger_s=a.event_linger,
        gc_young_threshold=a.gc_young_threshold,
        redaction_key=Path(a.redaction_key_file).read_text().strip() if a.redaction_key_file else "",
        budget_timezone=a.budget_timezone,
        http_port=a.http_port if a.http_port >= 0 else None,
        engine_access=engine_access,
    )
