"""The audit service's one frozen configuration, built in main() from flags and HARNESS_* env."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

from services.common.config import ServerConfig, add_server_args, env, server_config_from_args

DEFAULT_PORT = 50091
DEFAULT_METRICS_PORT = 9491
DEFAULT_DB_URL = "sqlite:///.harness/state/audit.db"
DEFAULT_WITNESS = ".harness/state/audit-witness"
DEFAULT_WITNESS_KEY = ".harness/state/audit-checkpoint.key"
# Harness services whose own certificate may append to the log (never a user, whatever roles).
DEFAULT_INGEST_SERVICES = ("router", "registry", "cost", "pool")
WITNESS_DIR_NAME, WITNESS_KEY_NAME = "audit-witness", "audit-checkpoint.key"


@dataclass(frozen=True)
class AuditConfig:
    server: ServerConfig = field(default_factory=lambda: ServerConfig(name="audit"))
    # SQLAlchemy URL: SQLite file (embedded default; its directory is created) or PostgreSQL.
    db_url: str = DEFAULT_DB_URL
    # Where signed checkpoints go (a directory or file:// URL; see services/common/checkpoints.py)
    # and the Ed25519 key that signs them (created on first start; `<key>.pub` beside it).
    # Empty: beside a SQLite database file (WITNESS_DIR_NAME, WITNESS_KEY_NAME); required otherwise.
    witness: str = ""
    witness_key: str = ""
    ingest_services: tuple[str, ...] = DEFAULT_INGEST_SERVICES
    # Registry host:port whose JWT settings user tokens are verified with ("" = the flags only).
    registry_addr: str = ""

    def __post_init__(self) -> None:
        if not self.db_url:
            raise ValueError("db_url must not be empty")
        if not (self.witness and self.witness_key) and _sqlite_dir(self.db_url) is None:
            raise ValueError("witness and witness_key are required with a database that is not a SQLite file")
        if not self.ingest_services:
            raise ValueError("ingest_services must name at least one service")

    def witness_url(self) -> str:
        return self.witness or str(_sqlite_dir(self.db_url) / WITNESS_DIR_NAME)

    def witness_key_path(self) -> str:
        return self.witness_key or str(_sqlite_dir(self.db_url) / WITNESS_KEY_NAME)


def _sqlite_dir(db_url: str) -> Path | None:
    url = make_url(db_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.audit", description="Harness audit service")
    add_server_args(parser, default_port=DEFAULT_PORT, default_metrics=DEFAULT_METRICS_PORT)
    parser.add_argument(
        "--db-url",
        default=env("AUDIT_DB", DEFAULT_DB_URL),
        help="SQLAlchemy URL (env HARNESS_AUDIT_DB); default %(default)s",
    )
    parser.add_argument(
        "--witness",
        default=env("AUDIT_WITNESS", DEFAULT_WITNESS),
        help="where signed checkpoints of the chain are appended: a directory (or file:// URL) the "
        "database's owner cannot rewrite (env HARNESS_AUDIT_WITNESS); default %(default)s",
    )
    parser.add_argument(
        "--witness-key",
        default=env("AUDIT_WITNESS_KEY", DEFAULT_WITNESS_KEY),
        help="Ed25519 key that signs checkpoints, created on first start; its public half is written "
        "to <key>.pub (env HARNESS_AUDIT_WITNESS_KEY); default %(default)s",
    )
    parser.add_argument(
        "--ingest-services",
        default=env("AUDIT_INGEST_SERVICES", ",".join(DEFAULT_INGEST_SERVICES)),
        help="comma-separated service identities (certificate names) allowed to append events "
        "(env HARNESS_AUDIT_INGEST_SERVICES); default %(default)s",
    )
    parser.add_argument(
        "--registry",
        default=env("REGISTRY_ADDR"),
        help="registry host:port: verify user tokens with its JWT settings while set (env "
        "HARNESS_REGISTRY_ADDR); off when empty",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> AuditConfig:
    return AuditConfig(
        server=server_config_from_args("audit", args),
        db_url=args.db_url,
        witness=args.witness,
        witness_key=args.witness_key,
        ingest_services=tuple(s.strip() for s in args.ingest_services.split(",") if s.strip()),
        registry_addr=args.registry,
    )
