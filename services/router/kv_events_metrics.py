"""Prometheus figures of the router's KV-event subscribers, read at scrape time (nothing on the
hot path). Label values are endpoint names, which the pool bounds.

- `harness_router_kv_events_batches_total{endpoint}`: event batches applied to the index.
- `harness_router_kv_events_gaps_total{endpoint,outcome}`: sequence gaps, `replayed` (filled from
  the engine's replay socket) or `resynced` (the index was cleared and rebuilt).
- `harness_router_kv_events_restarts_total{endpoint}`: engine restarts seen (numbering at 0 again).
- `harness_router_kv_events_bad_total{endpoint}`: messages that were not a KV event batch.
- `harness_router_kv_events_blocks{endpoint}`: block hashes the index holds for the endpoint.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.router.kv_events import KvEventFollower


class KvEventsCollector(Collector):
    def __init__(self, follower: KvEventFollower) -> None:
        self._follower = follower

    def collect(self) -> Iterable[Metric]:
        batches = CounterMetricFamily(
            "harness_router_kv_events_batches", "KV event batches applied", labels=["endpoint"]
        )
        gaps = CounterMetricFamily(
            "harness_router_kv_events_gaps", "KV event sequence gaps", labels=["endpoint", "outcome"]
        )
        restarts = CounterMetricFamily(
            "harness_router_kv_events_restarts", "Engine restarts seen in KV events", labels=["endpoint"]
        )
        bad = CounterMetricFamily(
            "harness_router_kv_events_bad", "Messages that were not KV event batches", labels=["endpoint"]
        )
        blocks = GaugeMetricFamily(
            "harness_router_kv_events_blocks", "Block hashes indexed for the endpoint", labels=["endpoint"]
        )
        for sub in self._follower.subscribers():
            name = sub.endpoint
            batches.add_metric([name], sub.batches)
            gaps.add_metric([name, "replayed"], sub.gaps - sub.resyncs)
            gaps.add_metric([name, "resynced"], sub.resyncs)
            restarts.add_metric([name], sub.restarts)
            bad.add_metric([name], sub.bad)
            blocks.add_metric([name], self._follower.indexed_blocks(name))
        yield from (batches, gaps, restarts, bad, blocks)


def register_kv_event_metrics(registry: CollectorRegistry, follower: KvEventFollower) -> None:
    registry.register(KvEventsCollector(follower))
