"""Registry configuration and wiring: one frozen config, one function that starts the server."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass

import grpc

from services.common.config import ServerConfig, add_server_args, env, server_config_from_args
from services.common.server import RunningServer, open_channel, start_server_owning
from services.registry.audit_feed import AuditFeed
from services.registry.engine import DEFAULT_DB_URL
from services.registry.jwt_follow import follow_stored_jwt_settings
from services.registry.metrics import registry_metrics
from services.registry.policy import Policy
from services.registry.servicer import RegistryServicer
from services.registry.store import Store
from services.registry.watch import WatchHub

DEFAULT_PORT = 50071
DEFAULT_METRICS_PORT = 9471


@dataclass(frozen=True)
class RegistryConfig:
    server: ServerConfig
    # SQLAlchemy URL: sqlite:///path (parent dir is created) or postgresql+psycopg://...
    db_url: str = DEFAULT_DB_URL
    log_level: str = "INFO"
    # How often Watch looks for revisions other registry processes committed (own writes wake
    # watchers at once).
    watch_poll_s: float = 0.5
    # Audit service address ("" = no audit feed): every change is shipped there as an
    # ADMIN_CHANGE event, over mTLS with the registry's own certificate.
    audit_addr: str = ""


def parse_args(argv: list[str] | None = None) -> RegistryConfig:
    parser = argparse.ArgumentParser(prog="python -m services.registry", description="Harness registry")
    add_server_args(parser, default_port=DEFAULT_PORT, default_metrics=DEFAULT_METRICS_PORT)
    parser.add_argument(
        "--db-url",
        default=env("REGISTRY_DB", DEFAULT_DB_URL),
        help="SQLAlchemy URL (env HARNESS_REGISTRY_DB); default %(default)s",
    )
    parser.add_argument(
        "--watch-poll",
        type=float,
        default=float(env("REGISTRY_WATCH_POLL_S", "0.5")),
        help="seconds between checks for other replicas' changes (env HARNESS_REGISTRY_WATCH_POLL_S)",
    )
    parser.add_argument(
        "--audit",
        default=env("AUDIT_ADDR"),
        help="audit service host:port to ship every change to (env HARNESS_AUDIT_ADDR); off when empty",
    )
    args = parser.parse_args(argv)
    if args.watch_poll <= 0:
        parser.error("--watch-poll must be > 0")
    return RegistryConfig(
        server=server_config_from_args("registry", args),
        db_url=args.db_url,
        log_level=args.log_level,
        watch_poll_s=args.watch_poll,
        audit_addr=args.audit,
    )


def build_servicer(config: RegistryConfig) -> RegistryServicer:
    """Opens the store (migrating its schema to head), the policy and the watch hub."""
    store = Store(config.db_url)
    hub = WatchHub(store, poll_s=config.watch_poll_s)
    return RegistryServicer(store, Policy(store), config.server.auth.trust_domain, hub)


async def serve(config: RegistryConfig) -> RunningServer:
    """Starts the registry; its database is closed after the server stops."""
    servicer = build_servicer(config)
    feed: AuditFeed | None = None
    channel: grpc.aio.Channel | None = None

    async def close() -> None:
        if feed is not None:
            await feed.stop()
        if channel is not None:
            await channel.close()
        servicer.hub.close()
        servicer.store.close()

    running = await start_server_owning(
        config.server,
        servicer.register,
        close,
        api_key_resolver=servicer.resolve_api_key,
        metrics_registry=registry_metrics(servicer.store.last_revision),
    )
    if config.audit_addr:
        try:
            channel = open_channel(config.audit_addr, config.server.tls)
            feed = AuditFeed(servicer.store, channel)
            feed.start()
        except BaseException:
            await running.stop(0)
            raise

    following: asyncio.Task | None = None
    if running.authenticator is not None:
        following = asyncio.get_running_loop().create_task(
            follow_stored_jwt_settings(
                servicer.hub, servicer.store, running.authenticator, config.server.auth
            ),
            name="registry-jwt-settings",
        )

    async def end_watches() -> None:
        servicer.hub.shutdown()
        if following is not None:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)

    running.on_stopping(end_watches)
    return running
