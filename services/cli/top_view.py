"""One frame of `harness top` as rich renderables, sized for an 80x24 terminal: the busiest
agents, every endpoint (up to a cap), the budgets closest to their limits, pending approvals."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from harness.audit.v1 import audit_pb2
from harness.cost.v1 import cost_pb2
from harness.pool.v1 import pool_pb2
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from services.cli.top_data import AgentRow

MAX_AGENTS, MAX_ENDPOINTS, MAX_BUDGETS, MAX_APPROVALS = 6, 4, 3, 2


@dataclass(frozen=True)
class Frame:
    agents: list[AgentRow]
    endpoints: list[pool_pb2.Endpoint]
    budgets: list[cost_pb2.Budget]
    approvals: list[audit_pb2.Approval]
    problems: list[str] = field(default_factory=list)
    now: float = field(default_factory=time.time)


def _table(title: str, *columns: str) -> Table:
    t = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, padding=(0, 1))
    t.show_edge = False
    for i, name in enumerate(columns):
        t.add_column(name, justify="left" if i == 0 else "right", no_wrap=True, overflow="ellipsis")
    return t


def _s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 10 else f"{seconds:.0f}s"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


def agents_table(rows: list[AgentRow]) -> Table:
    t = _table("Agents (time to first token: p50, p99, SLO target)", "AGENT", "SLO", "RPS", "P50", "P99", "TARGET",
               "TOK/S", "$/H", "ERR")  # fmt: skip
    busiest = sorted(rows, key=lambda r: (-r.rps, r.agent))
    for r in busiest[:MAX_AGENTS]:
        p99 = Text(_s(r.ttft_p99_s), style="red" if r.over_target else "")
        t.add_row(
            r.agent, r.slo_class, f"{r.rps:.1f}", _s(r.ttft_p50_s), p99, _s(r.ttft_target_s),
            f"{r.tokens_per_s:.0f}", f"{r.usd_per_hour:.2f}", _pct(r.error_share),
        )  # fmt: skip
    if len(rows) > MAX_AGENTS:
        t.caption = f"+{len(rows) - MAX_AGENTS} more agents"
    return t


def endpoints_table(endpoints: list[pool_pb2.Endpoint]) -> Table:
    t = _table("Endpoints", "ENDPOINT", "HEALTH", "GPU", "KV", "QUEUE", "MODELS")
    t.columns[-1].justify = "left"
    t.columns[-1].max_width = 40  # long model lists are cut, not the figures
    for ep in sorted(endpoints, key=lambda e: e.name)[:MAX_ENDPOINTS]:
        healthy = ep.health == pool_pb2.ENDPOINT_HEALTH_HEALTHY
        ready = [m for m in ep.models if m.state == pool_pb2.MODEL_STATE_READY]
        kv = max((m.kv_cache_fraction for m in ready if not m.kv_cache_unknown), default=None)
        t.add_row(
            ep.name,
            Text("ok" if healthy else "DOWN", style="" if healthy else "red"),
            _pct(ep.gpu_utilization),
            _pct(kv),
            str(sum(m.waiting_requests for m in ep.models)),
            ", ".join(m.name for m in ready) or "-",
        )
    if len(endpoints) > MAX_ENDPOINTS:
        t.caption = f"+{len(endpoints) - MAX_ENDPOINTS} more endpoints"
    return t


def _used(b: cost_pb2.Budget) -> float:
    return b.spent_micro_usd / b.limit_micro_usd if b.limit_micro_usd > 0 else 0.0


def budgets_table(budgets: list[cost_pb2.Budget], now: float) -> Table:
    t = _table("Budgets nearest their limits", "BUDGET", "USED", "SPENT", "LIMIT", "RESETS IN")
    for b in sorted(budgets, key=lambda b: (-_used(b), b.name))[:MAX_BUDGETS]:
        used = _used(b)
        style = "red" if used >= 1 else ("yellow" if used >= 0.8 else "")
        resets = "-"
        if b.HasField("reset_time"):
            resets = f"{max(0.0, b.reset_time.seconds - now) / 86400:.1f}d"
        t.add_row(
            b.name, Text(_pct(used), style=style), f"${b.spent_micro_usd / 1e6:,.2f}",
            f"${b.limit_micro_usd / 1e6:,.2f}", resets,
        )  # fmt: skip
    return t


def approvals_text(approvals: list[audit_pb2.Approval], now: float) -> Text:
    text = Text(f"Approvals pending: {len(approvals)}", style="bold")
    for a in approvals[:MAX_APPROVALS]:
        waited = max(0.0, now - a.create_time.seconds)
        text.append(f"\n  {a.id[:12]}  {a.requester.agent}  {a.tool}.{a.action}  by {a.requester.user}  ")
        text.append(f"{waited / 60:.0f}m ago", style="dim")
    return text


def render(frame: Frame) -> RenderableType:
    stamp = time.strftime("%H:%M:%S", time.localtime(frame.now))
    header = Text(f"harness top  {stamp}  (Ctrl-C quits)", style="bold reverse")
    parts: list[RenderableType] = [
        header,
        agents_table(frame.agents),
        endpoints_table(frame.endpoints),
        budgets_table(frame.budgets, frame.now),
        approvals_text(frame.approvals, frame.now),
    ]
    for problem in frame.problems[:2]:
        parts.append(Text(problem[:200], style="yellow", overflow="ellipsis", no_wrap=True))
    return Group(*parts)
