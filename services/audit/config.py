"""The audit service's one frozen configuration, built in main() from flags and HARNESS_* env."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from services.common.config import ServerConfig, add_server_args, env, server_config_from_args

DEFAULT_PORT = 50091
DEFAULT_METRICS_PORT = 9491
DEFAULT_DB_URL = "sqlite:///.harness/state/audit.db"


@dataclass(frozen=True)
class AuditConfig:
    server: ServerConfig = field(default_factory=lambda: ServerConfig(name="audit"))
    # SQLAlchemy URL: SQLite file (embedded default; its directory is created) or PostgreSQL.
    db_url: str = DEFAULT_DB_URL

    def __post_init__(self) -> None:
        if not self.db_url:
            raise ValueError("db_url must not be empty")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.audit", description="Harness audit service")
    add_server_args(parser, default_port=DEFAULT_PORT, default_metrics=DEFAULT_METRICS_PORT)
    parser.add_argument(
        "--db-url",
        default=env("AUDIT_DB", DEFAULT_DB_URL),
        help="SQLAlchemy URL (env HARNESS_AUDIT_DB); default %(default)s",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> AuditConfig:
    return AuditConfig(server=server_config_from_args("audit", args), db_url=args.db_url)
