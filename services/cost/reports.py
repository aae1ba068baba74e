"""Cost reports: the ledger's totals over a time range, grouped by dimensions, and what in each
group could not be priced (reported as unknown cost, never as zero). The queries and the
response are built here; the store runs them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.cost.v1 import cost_pb2
from sqlalchemy import Select, case, func, select

from services.common.errors import InvalidArgument
from services.cost.models import ledger

L = ledger.c
# Report dimensions -> ledger columns.
DIMENSIONS = ("user", "team", "project", "agent", "agent_version", "model", "deployment", "tool", "day")


@dataclass(frozen=True)
class ReportQuery:
    dims: list[str]
    totals: Select  # one row per group, largest cost first
    unpriced: Select  # per group and set of unpriced prices: how many events


def report_query(group_by: Sequence[str], start_us: int, end_us: int) -> ReportQuery:
    """The queries of a report over [start_us, end_us); INVALID_ARGUMENT for an unknown
    dimension or an empty range."""
    dims = list(dict.fromkeys(group_by))  # keep order, drop repeats
    unknown = [d for d in dims if d not in DIMENSIONS]
    if unknown:
        raise InvalidArgument(f"unknown group_by dimension(s) {unknown}; valid: {', '.join(DIMENSIONS)}")
    if end_us <= start_us:
        raise InvalidArgument("end_time must be after start_time")
    cols = [L[d] for d in dims]
    measures = [
        func.count().label("requests"),
        func.coalesce(func.sum(L.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(L.output_tokens), 0).label("output_tokens"),
        func.coalesce(func.sum(L.gpu_seconds), 0.0).label("gpu_seconds"),
        func.coalesce(func.sum(L.cost_micro_usd), 0).label("cost_micro_usd"),
        func.coalesce(func.sum(case((L.usage_estimated, 1), else_=0)), 0).label("estimated_requests"),
    ]
    totals = select(*cols, *measures).where(L.time_us >= start_us, L.time_us < end_us)
    if cols:
        totals = totals.group_by(*cols).order_by(func.sum(L.cost_micro_usd).desc(), *cols)
    gaps = select(*cols, L.unpriced, func.count().label("n")).where(
        L.time_us >= start_us, L.time_us < end_us, L.unpriced != ""
    )
    return ReportQuery(dims, totals, gaps.group_by(*cols, L.unpriced))


def report_response(dims: list[str], rows: Sequence, gap_rows: Sequence) -> cost_pb2.ReportResponse:
    """The response from the rows of ``ReportQuery.totals`` and ``ReportQuery.unpriced``."""
    unpriced: dict[tuple, tuple[int, set[str]]] = {}
    for g in gap_rows:
        key = tuple(g._mapping[d] or "" for d in dims)
        n, missing = unpriced.get(key, (0, set()))
        unpriced[key] = (n + g._mapping["n"], missing | set(g._mapping["unpriced"].split(",")))
    out = cost_pb2.ReportResponse()
    total = out.total
    all_missing: set[str] = set()
    for r in rows:
        m = r._mapping
        if not dims and not m["requests"]:
            continue  # no grouping and nothing in range: no rows, zero total
        row = out.rows.add(
            requests=m["requests"], input_tokens=int(m["input_tokens"]), output_tokens=int(m["output_tokens"]),
            gpu_seconds=float(m["gpu_seconds"]), cost_micro_usd=int(m["cost_micro_usd"]),
            estimated_requests=int(m["estimated_requests"]),
        )  # fmt: skip
        for d in dims:
            row.group[d] = m[d] or ""
        n, missing = unpriced.get(tuple(m[d] or "" for d in dims), (0, set()))
        row.unpriced_requests = n
        row.unpriced.extend(sorted(missing))
        total.unpriced_requests += n
        all_missing |= missing
        total.requests += row.requests
        total.input_tokens += row.input_tokens
        total.output_tokens += row.output_tokens
        total.gpu_seconds += row.gpu_seconds
        total.cost_micro_usd += row.cost_micro_usd
        total.estimated_requests += row.estimated_requests
    total.unpriced.extend(sorted(all_missing))
    return out
