"""The cost service's one frozen configuration, built in main() from flags and HARNESS_* env."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.common.config import ServerConfig, add_server_args, env, server_config_from_args

DEFAULT_PORT = 50101
DEFAULT_METRICS_PORT = 9501
DEFAULT_DB_URL = "sqlite:///.harness/state/cost.db"


@dataclass(frozen=True)
class CostConfig:
    server: ServerConfig = field(default_factory=lambda: ServerConfig(name="cost"))
    # SQLAlchemy URL: SQLite file (embedded default; its directory is created) or PostgreSQL.
    db_url: str = DEFAULT_DB_URL
    # IANA zone that budget periods (day, ISO week, month) and the ledger's `day` follow.
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if not self.db_url:
            raise ValueError("db_url must not be empty")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown timezone {self.timezone!r} (use an IANA name like Asia/Shanghai)"
            ) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.cost", description="Harness cost service")
    add_server_args(parser, default_port=DEFAULT_PORT, default_metrics=DEFAULT_METRICS_PORT)
    parser.add_argument(
        "--db-url",
        default=env("COST_DB", DEFAULT_DB_URL),
        help="SQLAlchemy URL (env HARNESS_COST_DB); default %(default)s",
    )
    parser.add_argument(
        "--timezone",
        default=env("COST_TIMEZONE", "UTC"),
        help="IANA timezone of budget periods and report days (env HARNESS_COST_TIMEZONE)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> CostConfig:
    return CostConfig(
        server=server_config_from_args("cost", args), db_url=args.db_url, timezone=args.timezone
    )
