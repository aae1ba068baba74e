"""Prometheus as one more child of `harness up`: a rendered prometheus.yml that scrapes every
service, both routers, the engines and Envoy, with the alert rules of deploy/prometheus/.

Prometheus is Debian's `prometheus` package (`make install` adds it); its storage lives under
the stack's root (.harness/prometheus/), so a restart of the stack keeps the history.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from services.stack.layout import StackPorts
from services.stack.procs import Child

REPO = Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "deploy" / "prometheus"
DEFAULT_SCRAPE_S = 5.0
MIN_SCRAPE_S, MAX_SCRAPE_S = 1.0, 60.0


@dataclass(frozen=True)
class ScrapeJob:
    """One Prometheus job: a name, the metrics path and `host:port` targets (plain HTTP);
    `endpoints`, when given, names each target's pool endpoint (an `endpoint` label, so engine
    figures join the pool's)."""

    name: str
    targets: tuple[str, ...]
    path: str = "/metrics"
    endpoints: tuple[str, ...] = ()

    def static_configs(self) -> list[dict]:
        if not self.endpoints:
            return [{"targets": list(self.targets)}]
        return [
            {"targets": [t], "labels": {"endpoint": e}}
            for t, e in zip(self.targets, self.endpoints, strict=True)
        ]


def stack_jobs(ports: StackPorts, engines: Sequence[tuple[str, int]]) -> list[ScrapeJob]:
    """Every metrics endpoint of the local stack. The job names are what the rules and
    dashboards select on (`job="router"` ...), the same in the compose stack. `engines`: each
    simulator's (pool endpoint name, metrics port)."""
    local = "127.0.0.1"
    return [
        ScrapeJob("router", tuple(f"{local}:{p}" for p in ports.router_metrics)),
        ScrapeJob("registry", (f"{local}:{ports.registry_metrics}",)),
        ScrapeJob("pool", (f"{local}:{ports.pool_metrics}",)),
        ScrapeJob("audit", (f"{local}:{ports.audit_metrics}",)),
        ScrapeJob("cost", (f"{local}:{ports.cost_metrics}",)),
        ScrapeJob(
            "engine", tuple(f"{local}:{p}" for _, p in engines), endpoints=tuple(n for n, _ in engines)
        ),
        ScrapeJob("envoy", (f"{local}:{ports.envoy_admin}",), path="/stats/prometheus"),
    ]


def render_config(jobs: Sequence[ScrapeJob], scrape_s: float, rules_dir: Path = RULES_DIR) -> dict:
    if not MIN_SCRAPE_S <= scrape_s <= MAX_SCRAPE_S:
        raise ValueError(f"scrape interval {scrape_s:g}s: use {MIN_SCRAPE_S:g} to {MAX_SCRAPE_S:g} seconds")
    interval = f"{scrape_s:g}s"
    return {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            "scrape_timeout": f"{min(scrape_s, 10.0):g}s",
        },
        "rule_files": [str(rules_dir.resolve() / "*.rules.yml")],
        "scrape_configs": [
            {
                "job_name": job.name,
                "metrics_path": job.path,
                "static_configs": [{"targets": list(job.targets)}],
            }
            for job in jobs
        ],
    }


def write_config(config: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# Rendered by `harness up`; edits are overwritten.\n" + yaml.safe_dump(config, sort_keys=False)
    path.write_text(text)


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise FileNotFoundError(
            "prometheus is not installed: run `make install` (Debian's prometheus package), "
            "or start the stack with --no-prometheus"
        )
    return found


def prometheus_child(root: Path, port: int, config_path: Path, logs: Path) -> Child:
    argv = [
        prometheus_binary(),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={root / 'prometheus'}",
        "--storage.tsdb.retention.time=7d",
        "--storage.tsdb.retention.size=1GB",  # a laptop's disk is not the fleet's
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    return Child("prometheus", argv, logs / "prometheus.log")


def ready(url: str) -> bool:
    """Prometheus answers /-/ready once its storage is open and the config loaded."""
    with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
        return r.status == 200


def targets(url: str) -> list[dict]:
    """The active targets (job, scrape URL, health, last error), from the HTTP API."""
    with urllib.request.urlopen(f"{url}/api/v1/targets?state=active", timeout=5) as r:
        return json.load(r)["data"]["activeTargets"]


def banner_line(url: str) -> str:
    return f"  {'Prometheus':<25} {url}  (alerts: {url}/alerts; live view: harness top)"
