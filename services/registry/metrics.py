"""The registry's own figure for Watch lag: `harness_registry_revision`, the newest committed
revision, read from the change log at scrape time. A follower whose
`harness_registry_mirror_revision` stays below it is behind."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class RevisionCollector(Collector):
    def __init__(self, last_revision: Callable[[], int]) -> None:
        self._last_revision = last_revision

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("harness_registry_revision", "")  # no database work at registration

    def collect(self) -> Iterable[Metric]:
        try:
            revision = self._last_revision()
        except Exception:  # a scrape must not fail the whole endpoint; the series goes missing
            log.exception("registry metrics: reading the newest revision failed")
            return
        yield GaugeMetricFamily(
            "harness_registry_revision", "Newest committed registry revision", value=revision
        )


def registry_metrics(last_revision: Callable[[], int]) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(RevisionCollector(last_revision))
    return registry
