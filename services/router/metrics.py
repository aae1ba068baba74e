"""The router's Prometheus metrics (dashboards and deploy/prometheus rules depend on the names).

Label values are bounded: `agent` and `model` only once the registry knows them (an unknown
agent's failed call counts under agent=""), `slo_class` and `outcome` are enum names, `kind` a
PII recognizer of the router's list. Never a request id, a user name or raw input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metric_children import Children

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
            "Generate requests by agent, outcome (a gRPC status name) and front door (grpc, triton, openai)",
            ["agent", "outcome", "frontdoor"],
            registry=registry,
        )
        self.stage_errors = Counter(
            "harness_router_stage_completion_errors",
            "Completion hooks of the request pipeline that raised (the call's other hooks still ran)",
            ["stage"],
            registry=registry,
        )
        self.shed = Counter(
            "harness_router_shed", "Requests shed by flow control", ["slo_class"], registry=registry
        )
        self.tokens = Counter(
            "harness_router_tokens",
            "Tokens of answered requests (direction: input or output)",
            ["agent", "model", "direction"],
            registry=registry,
        )
        self.redactions = Counter(
            "harness_router_redactions", "PII values redacted, by kind", ["kind"], registry=registry
        )
        self.authz_denials = Counter(
            "harness_router_authz_denials",
            "Calls refused by an access rule (subject: user or agent)",
            ["agent", "subject"],
            registry=registry,
        )
        self.cache_hits = Counter(
            "harness_router_cache_hits",
            "Results served from the cache or a coalesced call",
            ["kind"],
            registry=registry,
        )
        self.estimated_usage = Counter(
            "harness_router_estimated_usage",
            "Answered calls whose engine reported no token counts (usage counted from the text)",
            ["agent", "model"],
            registry=registry,
        )
        # Known label values start at 0, so dashboards and rate() see the series before the
        # first event instead of "no data".
        for slo_class in ("realtime", "interactive", "batch"):
            self.shed.labels(slo_class)
        for kind in ("hit", "coalesced"):
            self.cache_hits.labels(kind)
        # Each call observes the same few series: their children, looked up once.
        self._request, self._ttft, self._tbt = Children(self.request), Children(self.ttft), Children(self.tbt)
        self._queue, self._tokens, self._redactions = (
            Children(self.queue),
            Children(self.tokens),
            Children(self.redactions),
        )
        self.requests_of = Children(self.requests)

    def observe_call(
        self,
        labels: tuple[str, str, str],
        e2e_ms: float,
        ttft_ms: float,
        tbt_ms: float,
        queue_s: float,
        shed: bool,
        tokens: tuple[int, int],
        redactions: Mapping[str, int],
    ) -> None:
        """One finished call: latencies (agent, model, slo_class), tokens in/out, PII redactions."""
        self._request(*labels).observe(e2e_ms / 1000)
        if ttft_ms:
            self._ttft(*labels).observe(ttft_ms / 1000)
        if tbt_ms:
            self._tbt(*labels).observe(tbt_ms / 1000)
        self._queue(*labels).observe(queue_s)  # 0 when not queued: percentiles cover every call
        if shed:
            self.shed.labels(labels[2]).inc()
        self._tokens(*labels[:2], "input").inc(tokens[0])
        self._tokens(*labels[:2], "output").inc(tokens[1])
        for kind, count in redactions.items():
            self._redactions(kind).inc(count)


def export_queue_depth(registry: CollectorRegistry, queued: Callable[[str], int], classes: list[str]) -> None:
    """`harness_router_queued_requests{slo_class}`: requests waiting in flow control right now,
    read at scrape time. The Kubernetes HPA scales routers on it (a queue forms before CPU
    saturates when engines are the bottleneck, and CPU alone would not add routers then)."""
    gauge = Gauge(
        "harness_router_queued_requests",
        "Requests waiting in flow control for endpoint capacity now, by SLO class",
        ["slo_class"],
        registry=registry,
    )
    for name in classes:
        gauge.labels(name).set_function(lambda name=name: queued(name))
