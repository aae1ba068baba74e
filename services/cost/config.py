"""The cost service's one frozen configuration, built in main() from flags and HARNESS_* env."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.common.config import ServerConfig, add_server_args, env, server_config_from_args
from services.cost.webhooks import WebhookPolicy

DEFAULT_PORT = 50101
DEFAULT_METRICS_PORT = 9501
DEFAULT_DB_URL = "sqlite:///.harness/state/cost.db"


@dataclass(frozen=True)
class AlertConfig:
    """Budget alert delivery (services/cost/alert_delivery.py)."""

    # Audit service host:port ("" = alerts are not shipped to the audit log). The cost service
    # calls it over mTLS with its own server certificate, as the registry and router do.
    audit_addr: str = ""
    poll_s: float = 1.0  # how often to look for other replicas' undelivered alerts
    sweep_s: float = 60.0  # how often every budget's current period is checked (also at start)
    batch_size: int = 100
    audit_timeout_s: float = 10.0
    min_backoff_s: float = 0.2  # audit service or database unreachable: retry backoff
    max_backoff_s: float = 10.0
    webhook_timeout_s: float = 5.0
    webhook_attempts: int = 8  # POSTs per alert before it is marked failed
    webhook_min_backoff_s: float = 2.0  # after attempt n: min x 2^(n-1), capped at max
    webhook_max_backoff_s: float = 300.0
    # Which URLs webhooks may target (schemes, hosts, networks allowed although private).
    webhooks: WebhookPolicy = field(default_factory=WebhookPolicy)

    def __post_init__(self) -> None:
        positive = ("poll_s", "sweep_s", "audit_timeout_s", "min_backoff_s", "webhook_timeout_s",
                    "webhook_min_backoff_s")  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"alerts.{name} must be > 0")
        if self.batch_size < 1 or self.webhook_attempts < 1:
            raise ValueError("alerts.batch_size and alerts.webhook_attempts must be >= 1")
        if self.max_backoff_s < self.min_backoff_s or self.webhook_max_backoff_s < self.webhook_min_backoff_s:
            raise ValueError("alert max backoffs must not be below their minimums")


@dataclass(frozen=True)
class CostConfig:
    server: ServerConfig = field(default_factory=lambda: ServerConfig(name="cost"))
    # SQLAlchemy URL: SQLite file (embedded default; its directory is created) or PostgreSQL.
    db_url: str = DEFAULT_DB_URL
    # IANA zone that budget periods (day, ISO week, month) and the ledger's `day` follow.
    timezone: str = "UTC"
    alerts: AlertConfig = field(default_factory=AlertConfig)
    pool_addr: str = ""  # the advisor's live fleet; "" = none (Advise says so in its notes)
    registry_addr: str = ""  # the advisor's model catalog and agents' max_tokens
    fleet_ttl_s: float = 5.0  # how long the advisor reuses a fleet snapshot

    def __post_init__(self) -> None:
        if self.fleet_ttl_s < 0:
            raise ValueError("fleet_ttl_s must be >= 0")
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
    parser.add_argument(
        "--audit",
        default=env("AUDIT_ADDR"),
        help="audit service host:port that budget alerts are shipped to (env HARNESS_AUDIT_ADDR); "
        "off when empty",
    )
    parser.add_argument(
        "--pool",
        default=env("POOL_ADDR", ""),
        help="pool host:port: the advisor's live fleet of deployments (env HARNESS_POOL_ADDR)",
    )
    parser.add_argument(
        "--registry",
        default=env("REGISTRY_ADDR", ""),
        help="registry host:port: the advisor's model catalog (env HARNESS_REGISTRY_ADDR)",
    )
    parser.add_argument(
        "--fleet-ttl",
        type=float,
        default=float(env("COST_FLEET_TTL_S", "5")),
        help="seconds the advisor reuses a fleet snapshot (env HARNESS_COST_FLEET_TTL_S)",
    )
    parser.add_argument(
        "--webhook-attempts",
        type=int,
        default=int(env("COST_WEBHOOK_ATTEMPTS", "8")),
        help="POSTs per budget alert before its webhook is marked failed (env HARNESS_COST_WEBHOOK_ATTEMPTS)",
    )
    parser.add_argument(
        "--webhook-timeout",
        type=float,
        default=float(env("COST_WEBHOOK_TIMEOUT_S", "5")),
        help="seconds a budget alert webhook may take to answer (env HARNESS_COST_WEBHOOK_TIMEOUT_S)",
    )
    parser.add_argument(
        "--webhook-schemes",
        default=env("COST_WEBHOOK_SCHEMES", "https"),
        help="comma-separated URL schemes budget webhooks may use (env HARNESS_COST_WEBHOOK_SCHEMES); default %(default)s",
    )
    parser.add_argument(
        "--webhook-hosts",
        default=env("COST_WEBHOOK_HOSTS", ""),
        help="comma-separated hosts budget webhooks may target, `*.example.com` for subdomains; empty: any "
        "host with public addresses (env HARNESS_COST_WEBHOOK_HOSTS)",
    )
    parser.add_argument(
        "--webhook-allow-networks",
        default=env("COST_WEBHOOK_ALLOW_NETWORKS", ""),
        help="comma-separated CIDRs webhooks may reach although private, loopback or link-local (refused by "
        "default), e.g. 10.20.0.0/16 for an on-prem receiver (env HARNESS_COST_WEBHOOK_ALLOW_NETWORKS)",
    )
    return parser


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip().lower() for x in text.split(",") if x.strip())


def config_from_args(args: argparse.Namespace) -> CostConfig:
    return CostConfig(
        server=server_config_from_args("cost", args),
        db_url=args.db_url,
        timezone=args.timezone,
        alerts=AlertConfig(
            audit_addr=args.audit,
            webhook_attempts=args.webhook_attempts,
            webhook_timeout_s=args.webhook_timeout,
            webhooks=WebhookPolicy(
                schemes=_csv(args.webhook_schemes),
                hosts=_csv(args.webhook_hosts),
                allowed_networks=_csv(args.webhook_allow_networks),
            ),
        ),
        pool_addr=args.pool,
        registry_addr=args.registry,
        fleet_ttl_s=args.fleet_ttl,
    )
