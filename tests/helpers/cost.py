"""A cost service for integration tests: real server on port 0, SQLite under the test's tmp dir."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from services.common.config import ServerConfig
from services.cost.config import AlertConfig, CostConfig
from services.cost.servicer import start_cost
from services.cost.webhooks import WebhookPolicy

# Webhooks to a receiver the test runs on this host (loopback is refused by default).
LOCAL_WEBHOOKS = WebhookPolicy(schemes=("http",), allowed_networks=("127.0.0.0/8",))


async def start_test_cost(
    tmp_path: Path,
    auth,
    *,
    registry: CollectorRegistry | None = None,
    alerts: AlertConfig | None = None,
    **kw,
):
    """Starts the cost service (no metrics port; its metrics go to `registry`)."""
    config = CostConfig(
        server=ServerConfig(name="cost", port=0, metrics_port=None, auth=auth),
        db_url=f"sqlite:///{tmp_path / 'state' / 'cost.db'}",
        alerts=alerts or AlertConfig(),
    )
    return await start_cost(config, metrics_registry=registry or CollectorRegistry(), **kw)
