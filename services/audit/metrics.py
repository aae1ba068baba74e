"""The audit service's Prometheus metrics.

- `harness_audit_records_total`, `harness_audit_duplicates_total`: events stored / received again.
- `harness_audit_ingest_rejected_total`: Ingest calls refused for a bad event (the sender's
  batch stays in its outbox: a growing count means events are stuck).
- `harness_audit_chain_verifications_total{result}`: Verify runs, result "ok" or "broken".
- `harness_audit_approvals_pending`: approvals waiting for a decision (not expired), read from
  the store at scrape time.
- `harness_audit_witness_discontinuities_total`: appends that found the log changed outside the
  service since its last signed checkpoint (records written, deleted or rewritten in the
  database); any increase means tampering, and `harness audit verify` says what.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from harness.audit.v1 import audit_pb2
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from services.audit.models import approvals
from services.audit.store import AuditStore

log = logging.getLogger(__name__)
A = approvals.c


class PendingApprovalsCollector(Collector):
    def __init__(self, store: AuditStore) -> None:
        self._store = store

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("harness_audit_approvals_pending", "")  # no database work at registration

    def collect(self) -> Iterable[Metric]:
        stmt = select(func.count()).where(
            A.state == audit_pb2.APPROVAL_STATE_PENDING, A.expire_time_us > self._store.now_us()
        )
        try:  # runs on the metrics HTTP thread, so a blocking read is fine here
            with self._store.engine.connect() as conn:
                pending = int(conn.scalar(stmt) or 0)
        except Exception:  # a scrape must not fail the whole endpoint; the series goes missing
            log.exception("audit metrics: counting pending approvals failed")
            return
        yield GaugeMetricFamily(
            "harness_audit_approvals_pending", "Approvals waiting for a decision (not expired)", value=pending
        )


class WitnessCollector(Collector):
    def __init__(self, store: AuditStore) -> None:
        self._store = store

    def collect(self) -> Iterable[Metric]:
        anchor = self._store.anchor
        yield CounterMetricFamily(
            "harness_audit_witness_discontinuities",
            "Appends that found the log changed outside the service since its last signed checkpoint",
            value=anchor.discontinuities if anchor is not None else 0,
        )


class AuditMetrics:
    def __init__(self, registry: CollectorRegistry, store: AuditStore | None = None) -> None:
        self.records = Counter("harness_audit_records", "Audit records newly stored", registry=registry)
        self.duplicates = Counter(
            "harness_audit_duplicates", "Audit events received again and not stored", registry=registry
        )
        self.ingest_rejected = Counter(
            "harness_audit_ingest_rejected", "Ingest calls refused for a bad event", registry=registry
        )
        self.verifications = Counter(
            "harness_audit_chain_verifications",
            "Hash-chain verifications by result",
            ["result"],
            registry=registry,
        )
        if store is not None:
            registry.register(PendingApprovalsCollector(store))
            registry.register(WitnessCollector(store))
