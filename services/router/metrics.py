"""The router's Prometheus metrics (names fixed by the router issue; dashboards depend on them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

LABELS = ("agent", "model", "slo_class")
# TTFT/queue waits span sub-millisecond cache hits to tens of seconds under overload.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_TBT_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.ttft = Histogram(
            "harness_router_ttft_seconds",
            "Time to first token",
            LABELS,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.tbt = Histogram(
            "harness_router_tbt_seconds",
            "Mean time between tokens",
            LABELS,
            buckets=_TBT_BUCKETS,
            registry=registry,
        )
        self.request = Histogram(
            "harness_router_request_seconds", "End-to-end request time", LABELS, buckets=_LATENCY_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.queue = Histogram(
            "harness_router_queue_seconds", "Time waiting in flow control", LABELS, buckets=_LATENCY_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.requests = Counter(
            "harness_router_requests",
            "Requests by outcome (a gRPC status name) and front door (grpc, triton, openai)",
            ["outcome", "frontdoor"],
            registry=registry,
        )
        self.shed = Counter(
            "harness_router_shed", "Requests shed by flow control", ["slo_class"], registry=registry
        )
        self.cache_hits = Counter(
            "harness_router_cache_hits",
            "Results served from the cache or a coalesced call",
            ["kind"],
            registry=registry,
        )
