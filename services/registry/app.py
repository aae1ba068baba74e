"""Registry configuration and wiring: one frozen config, one function that starts the server."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from services.common.config import ServerConfig, add_server_args, env, server_config_from_args
from services.common.server import RunningServer, start_server_owning
from services.registry.policy import Policy
from services.registry.servicer import RegistryServicer
from services.registry.store import Store

DEFAULT_PORT = 50071
DEFAULT_METRICS_PORT = 9471
DEFAULT_DB_URL = "sqlite:///.harness/state/registry.db"


@dataclass(frozen=True)
class RegistryConfig:
    server: ServerConfig
    # SQLAlchemy URL: sqlite:///path (parent dir is created) or postgresql+psycopg://...
    db_url: str = DEFAULT_DB_URL
    log_level: str = "INFO"


def parse_args(argv: list[str] | None = None) -> RegistryConfig:
    parser = argparse.ArgumentParser(prog="python -m services.registry", description="Harness registry")
    add_server_args(parser, default_port=DEFAULT_PORT, default_metrics=DEFAULT_METRICS_PORT)
    parser.add_argument(
        "--db-url",
        default=env("REGISTRY_DB", DEFAULT_DB_URL),
        help="SQLAlchemy URL (env HARNESS_REGISTRY_DB); default %(default)s",
    )
    args = parser.parse_args(argv)
    return RegistryConfig(
        server=server_config_from_args("registry", args), db_url=args.db_url, log_level=args.log_level
    )


def build_servicer(config: RegistryConfig) -> RegistryServicer:
    """Opens the store and policy on `config.db_url` (tables are created if missing)."""
    store = Store(config.db_url)
    return RegistryServicer(store, Policy(store), config.server.auth.trust_domain)


async def serve(config: RegistryConfig) -> RunningServer:
    """Starts the registry; its database is closed after the server stops."""
    servicer = build_servicer(config)

    async def close() -> None:
        servicer.store.close()

    return await start_server_owning(
        config.server, servicer.register, close, api_key_resolver=servicer.resolve_api_key
    )
