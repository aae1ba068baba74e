"""Files the Kubernetes manifests carry as copies, kept equal to their sources.

kustomize reads only files under a kustomization's own folder, so the manifests under
deploy/kubernetes/ hold copies of: the Envoy config (rendered by services/envoy/kubernetes.py),
the routers' scheduling profiles, the alert and recording rules (as a Prometheus operator
PrometheusRule) and the demo data the dev overlay seeds. `--check` (run by the tests) exits 1
naming every stale copy; `--write` refreshes them.

    python -m services.devtools.kube_sync --write
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from services.envoy.kubernetes import HEADER as ENVOY_HEADER
from services.envoy.kubernetes import kubernetes_spec
from services.envoy.render import dump_envoy_config

REPO = Path(__file__).resolve().parents[2]
KUBE = Path("deploy/kubernetes")
RULES_SOURCE = Path("deploy/prometheus/harness.rules.yml")


def _copy(source: str) -> Callable[[Path], str]:
    return lambda repo: (repo / source).read_text()


def prometheus_rule(repo: Path) -> str:
    """deploy/prometheus/harness.rules.yml as a PrometheusRule (the same groups, unchanged)."""
    groups = yaml.safe_load((repo / RULES_SOURCE).read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "harness", "labels": {"release": "kube-prometheus-stack"}},
        "spec": {"groups": groups},
    }
    header = f"# GENERATED from {RULES_SOURCE} by `python -m services.devtools.kube_sync --write`; edit that file.\n"
    return header + yaml.safe_dump(rule, sort_keys=False, width=120, allow_unicode=True)


def envoy_config(_repo: Path) -> str:
    return dump_envoy_config(kubernetes_spec(), ENVOY_HEADER)


# destination (under deploy/kubernetes) -> how to make its content
COPIES: dict[str, Callable[[Path], str]] = {
    "base/config/envoy.yaml": envoy_config,
    "base/config/profiles.yaml": _copy("services/router/scheduling/profiles.yaml"),
    "base/monitoring/prometheusrule.yaml": prometheus_rule,
    "overlays/dev/seed/demo.yaml": _copy("compose/demo.yaml"),
}


def stale(repo: Path = REPO) -> list[str]:
    """Copies whose content differs from their source (missing ones included)."""
    out = []
    for dest, make in COPIES.items():
        path = repo / KUBE / dest
        if not path.exists() or path.read_text() != make(repo):
            out.append(str(KUBE / dest))
    return out


def write(repo: Path = REPO) -> list[str]:
    written = []
    for dest, make in COPIES.items():
        path = repo / KUBE / dest
        path.parent.mkdir(parents=True, exist_ok=True)
        text = make(repo)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(str(KUBE / dest))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m services.devtools.kube_sync", description=__doc__.split("\n")[0]
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="refresh every stale copy")
    mode.add_argument("--check", action="store_true", help="exit 1 if any copy is stale")
    args = p.parse_args(argv)
    if args.check:
        bad = stale()
        for path in bad:
            print(f"{path} is stale: python -m services.devtools.kube_sync --write", file=sys.stderr)
        return 1 if bad else 0
    for path in write():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
