"""What `harness top` shows, read from the services themselves: the routers' and the cost
service's /metrics (agents: traffic, latency, tokens, spend) and the Pool, Cost and Audit APIs
(endpoints, budgets, pending approvals). No Prometheus needed.

Rates (requests/s, tokens/s, USD/h) are over the scrapes of the last WINDOW_S; latency
percentiles and the error share too while the agent has traffic, else since the routers started.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from services.common.metrics_page import Key, scrape

WINDOW_S = 60.0
SERVER_ERRORS = frozenset({"INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "UNKNOWN", "DATA_LOSS"})


COUNTED = ("_total", "_bucket", "_count", "_sum")


def merge(pages: Iterable[Mapping[Key, float]]) -> dict[Key, float]:
    """Several replicas' pages as one fleet: counters and histograms add up; a gauge (an agent's
    target, which every router exports alike) takes the largest value."""
    fleet: dict[Key, float] = {}
    for page in pages:
        for key, value in page.items():
            if key not in fleet:
                fleet[key] = value
            elif key[0].endswith(COUNTED):
                fleet[key] += value
            else:
                fleet[key] = max(fleet[key], value)
    return fleet


@dataclass(frozen=True)
class Scrape:
    at: float  # time.monotonic()
    values: dict[Key, float]


def _by(values: Mapping[Key, float], name: str, *group: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for (sample, labels), v in values.items():
        if sample == name:
            d = dict(labels)
            out[tuple(d.get(g, "") for g in group)] += v
    return out


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative {le: count} (linear within a bucket)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower_bound = lower_count = 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if le == float("inf"):
                return lower_bound
            width = count - lower_count
            return lower_bound + (le - lower_bound) * ((rank - lower_count) / width if width else 1.0)
        lower_bound, lower_count = le, count
    return lower_bound


@dataclass(frozen=True)
class AgentRow:
    agent: str
    slo_class: str
    rps: float
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    ttft_target_s: float | None
    tokens_per_s: float
    usd_per_hour: float
    error_share: float | None  # server-side failures / requests; None without requests

    @property
    def over_target(self) -> bool:
        return None not in (self.ttft_p99_s, self.ttft_target_s) and self.ttft_p99_s > self.ttft_target_s


@dataclass
class AgentStats:
    """Keeps the scrapes of the last WINDOW_S and turns them into one row per agent."""

    window_s: float = WINDOW_S
    _history: deque[Scrape] = field(default_factory=deque)

    def add(self, scrape: Scrape) -> None:
        self._history.append(scrape)
        while len(self._history) > 2 and self._history[1].at <= scrape.at - self.window_s:
            self._history.popleft()

    def rows(self) -> list[AgentRow]:
        if not self._history:
            return []
        new, old = self._history[-1], self._history[0]
        elapsed = new.at - old.at
        n, o = new.values, old.values if elapsed > 0 else {}
        requests_new, requests_old = (
            _by(n, "harness_router_requests_total", "agent", "outcome"),
            _by(o, "harness_router_requests_total", "agent", "outcome"),
        )
        targets = _by(n, "harness_router_agent_ttft_target_seconds", "agent", "slo_class")
        agents = {a for (a, _) in requests_new if a} | {a for (a, _) in targets}
        rows = []
        for agent in sorted(agents):
            moved = sum(v - requests_old.get(k, 0.0) for k, v in requests_new.items() if k[0] == agent)
            since = o if moved > 0 else {}  # latency and errors: the window when active, else all
            rows.append(self._row(agent, n, o, since, targets, elapsed))
        return rows

    def _row(self, agent, n, o, since, targets, elapsed) -> AgentRow:
        def delta(values_old, name, *group):
            new, old = _by(n, name, "agent", *group), _by(values_old, name, "agent", *group)
            return {k[1:]: v - old.get(k, 0.0) for k, v in new.items() if k[0] == agent}

        def per_s(name: str, *group: str) -> float:
            return sum(delta(o, name, *group).values()) / elapsed if elapsed > 0 else 0.0

        outcomes = delta(since, "harness_router_requests_total", "outcome")
        total = sum(outcomes.values())
        errors = sum(v for (outcome,), v in outcomes.items() if outcome in SERVER_ERRORS)
        buckets: dict[float, float] = defaultdict(float)
        for (le,), v in delta(since, "harness_router_ttft_seconds_bucket", "le").items():
            buckets[float(le)] += v
        target = next(((slo, v) for (a, slo), v in targets.items() if a == agent), ("", None))
        slo = (
            target[0] or next(iter(delta(since, "harness_router_ttft_seconds_count", "slo_class")), ("",))[0]
        )
        return AgentRow(
            agent=agent,
            slo_class=slo,
            rps=per_s("harness_router_requests_total", "outcome"),
            ttft_p50_s=quantile(0.5, buckets),
            ttft_p99_s=quantile(0.99, buckets),
            ttft_target_s=target[1],
            tokens_per_s=per_s("harness_router_tokens_total", "direction"),
            usd_per_hour=per_s("harness_cost_usd_total") * 3600,
            error_share=errors / total if total > 0 else None,
        )


def collect(urls: Iterable[str], timeout_s: float = 2.0) -> tuple[Scrape, list[str]]:
    """Scrapes every URL; pages that fail are left out and named in the returned problems."""
    pages, problems = [], []
    for url in urls:
        try:
            pages.append(scrape(url, timeout_s))
        except (OSError, ValueError) as exc:
            problems.append(f"{url}: {exc}")
    return Scrape(time.monotonic(), merge(pages)), problems
