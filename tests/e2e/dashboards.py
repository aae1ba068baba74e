"""The Grafana dashboards in deploy/grafana/dashboards/, read as the monitoring tests and the
README describe them: every panel query, with Grafana's variables replaced by real values."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"
# What Grafana puts in place of its built-in variables, for running a query outside Grafana.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def dashboards() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panel_queries(dashboard: dict, values: dict[str, str]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every target, variables replaced (`values`: $name -> value)."""
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in {**GRAFANA_VARIABLES, **values}.items():
                expr = expr.replace(name, value)
            yield panel["title"], expr
