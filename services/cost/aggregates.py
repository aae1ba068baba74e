"""The cost service's running sums, kept in the transaction that records each usage batch, so the
reads that happen all the time never scan the ledger:

- `cost_totals` (team, project, agent, model): harness_cost_usd_total at every scrape;
- `spend_buckets` (budget scope, subject, quarter hour): a budget's spend in its period, read by
  GetBudget, by ListBudgets (every router polls it), and by alert detection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from harness.cost.v1 import cost_pb2
from sqlalchemy import Table, func, select

from services.cost.models import SPEND_BUCKET_US, cost_totals, ledger, spend_buckets

if TYPE_CHECKING:
    from services.cost.store import LedgerEntry

L = ledger.c
# Budget scope -> the ledger column naming its subject.
SCOPE_COLUMN = {
    cost_pb2.BUDGET_SCOPE_USER: L.user,
    cost_pb2.BUDGET_SCOPE_TEAM: L.team,
    cost_pb2.BUDGET_SCOPE_PROJECT: L.project,
    cost_pb2.BUDGET_SCOPE_AGENT: L.agent,
}


def add(conn, insert: Callable, new: Sequence[LedgerEntry]) -> None:
    """Adds the batch's new cost to cost_totals and spend_buckets (in the batch's transaction,
    so they are the ledger's sums exactly). Keys in sorted order, tables in one order:
    overlapping batches of two replicas lock rows in one global order (no deadlock)."""
    totals: dict[tuple, int] = {}
    buckets: dict[tuple, int] = {}
    for e in new:
        if not e.cost_micro_usd:
            continue
        key = (e.team, e.project, e.agent, e.model)
        totals[key] = totals.get(key, 0) + e.cost_micro_usd
        bucket = e.time_us - e.time_us % SPEND_BUCKET_US
        for scope, subject in zip(SCOPE_COLUMN, (e.user, e.team, e.project, e.agent), strict=True):
            if subject:
                buckets[(scope, subject, bucket)] = (
                    buckets.get((scope, subject, bucket), 0) + e.cost_micro_usd
                )
    _add(conn, insert, cost_totals, ("team", "project", "agent", "model"), totals)
    _add(conn, insert, spend_buckets, ("scope", "subject", "bucket_us"), buckets)


def _add(conn, insert: Callable, table: Table, key_columns: tuple[str, ...], sums: dict[tuple, int]) -> None:
    if not sums:
        return
    rows = [
        {**dict(zip(key_columns, key, strict=True)), "cost_micro_usd": micro}
        for key, micro in sorted(sums.items())
    ]
    stmt = insert(table)
    # One statement executed for every key (in key order), not one built per key.
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=list(key_columns),
            set_={"cost_micro_usd": table.c.cost_micro_usd + stmt.excluded.cost_micro_usd},
        ),
        rows,
    )


def spend(conn, scope: int, subject: str, start_us: int | None, end_us: int | None) -> int:
    """Spend of one budget scope in [start, end) (None bounds: all time), micro-USD: from the
    quarter-hour buckets, or from the ledger for bounds that are not on a quarter hour."""
    B = spend_buckets.c
    bucketed = start_us is None or (start_us % SPEND_BUCKET_US == 0 and end_us % SPEND_BUCKET_US == 0)
    if bucketed:
        stmt = select(func.coalesce(func.sum(B.cost_micro_usd), 0)).where(
            B.scope == scope, B.subject == subject
        )
        if start_us is not None:
            stmt = stmt.where(B.bucket_us >= start_us, B.bucket_us < end_us)
    else:
        stmt = select(func.coalesce(func.sum(L.cost_micro_usd), 0)).where(SCOPE_COLUMN[scope] == subject)
        stmt = stmt.where(L.time_us >= start_us, L.time_us < end_us)
    return int(conn.scalar(stmt))
