"""Prometheus figures of a registry mirror (routers, the pool), read at scrape time.

- `harness_registry_mirror_ready`: 1 once the first snapshot is applied (the service has a
  copy of the registry to serve from), else 0.
- `harness_registry_mirror_connected`: 1 while the Watch stream is open.
- `harness_registry_mirror_revision`: the registry revision this copy has applied; compared
  with the registry's own `harness_registry_revision`, the difference is the Watch lag.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.common.registry_mirror import RegistryMirror


class MirrorCollector(Collector):
    def __init__(self, mirror: RegistryMirror) -> None:
        self._mirror = mirror

    def collect(self) -> Iterable[Metric]:
        m = self._mirror
        yield GaugeMetricFamily(
            "harness_registry_mirror_ready",
            "1 once this copy of the registry holds a snapshot",
            value=m.ready,
        )
        yield GaugeMetricFamily(
            "harness_registry_mirror_connected",
            "1 while the registry Watch stream is open",
            value=m.connected,
        )
        yield GaugeMetricFamily(
            "harness_registry_mirror_revision", "Registry revision this copy has applied", value=m.revision
        )


def register_mirror_metrics(registry: CollectorRegistry, mirror: RegistryMirror) -> None:
    registry.register(MirrorCollector(mirror))
