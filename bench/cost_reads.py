"""Cost reads that happen all the time, against a ledger of many rows: a budget's period spend
(GetBudget; ListBudgets, which every router polls every 5 s, computes it for every budget; alert
checks) and a /metrics scrape of harness_cost_usd_total. Each is timed two ways: (old) summing
the ledger rows, as the service did before the running sums, and (new) reading the running sums
the store keeps with every batch (services/cost/aggregates.py). Prints the medians and ratios.

Fills a fresh SQLite file (or --db-url, e.g. a PostgreSQL database you can drop) through the
store's own Record path: --rows usage rows over the last 30 days, 20 projects, 50 agents.

Usage: python bench/cost_reads.py [--rows 100000] [--db-url URL] [--repeat 20]
(100,000 rows take ~2.5 min to fill on the 2-core development machine.)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import func, select

from services.common.pricing import period_bounds, to_us, usd_to_micro
from services.cost import aggregates
from services.cost.metrics import CostMetrics
from services.cost.models import ledger
from services.cost.store import CostStore

L = ledger.c
K = cost_pb2


async def fill(store: CostStore, rows: int) -> None:
    for kind, subject, usd in ((K.PRICE_KIND_MODEL_INPUT_TOKENS, "llama-3-8b", 0.20),
                               (K.PRICE_KIND_MODEL_OUTPUT_TOKENS, "llama-3-8b", 0.60)):  # fmt: skip
        price = K.Price(kind=kind, subject=subject, micro_usd=usd_to_micro(usd))
        price.effective_time.FromSeconds(0)
        await store.set_price(price)
    rng = random.Random(1)
    now = int(time.time())
    batch: list[common_pb2.UsageEvent] = []
    for i in range(rows):
        ev = common_pb2.UsageEvent(
            event_id=f"e{i}", model="llama-3-8b", deployment="llama-3-8b@sim-0",
            actor=common_pb2.Actor(user=f"u{rng.randrange(200)}", team=f"t{rng.randrange(5)}",
                                   project=f"p{rng.randrange(20)}", agent=f"a{rng.randrange(50)}"),
            usage=common_pb2.Usage(input_tokens=rng.randint(100, 4000), output_tokens=rng.randint(10, 800)),
        )  # fmt: skip
        ev.time.FromSeconds(now - rng.randrange(30 * 86_400))
        batch.append(ev)
        if len(batch) == 500:
            await store.record(batch)
            batch = []
            if (i + 1) % 10_000 == 0:
                print(f"\rfilling the ledger: {i + 1:,}/{rows:,}", end="", file=sys.stderr, flush=True)
    if batch:
        await store.record(batch)
    print(file=sys.stderr)


def old_spend(conn, column, subject: str, start_us: int, end_us: int) -> int:
    stmt = select(func.coalesce(func.sum(L.cost_micro_usd), 0)).where(
        column == subject, L.time_us >= start_us, L.time_us < end_us
    )
    return int(conn.scalar(stmt))


def old_scrape(conn) -> int:
    spent = func.sum(L.cost_micro_usd)
    stmt = select(L.team, L.project, L.agent, L.model, spent).group_by(L.team, L.project, L.agent, L.model)
    return len(conn.execute(stmt.having(spent > 0)).all())


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--db-url", default="")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db_url or f"sqlite:///{tmp}/cost.db"
        store = await CostStore.open(url)
        try:
            await fill(store, args.rows)
            registry = CollectorRegistry()
            CostMetrics(registry, store)
            start, end = period_bounds(K.BUDGET_PERIOD_MONTHLY, datetime.now(UTC), ZoneInfo("UTC"))
            bounds = (to_us(start), to_us(end))
            with store._engine.connect() as conn:
                rows_in_month = conn.scalar(select(func.count()).where(L.time_us >= bounds[0]))
                assert old_spend(conn, L.project, "p3", *bounds) == aggregates.spend(
                    conn, K.BUDGET_SCOPE_PROJECT, "p3", *bounds
                )
                figures = [
                    ("project budget, this month's spend", median_ms(lambda: old_spend(conn, L.project, "p3", *bounds), args.repeat),
                     median_ms(lambda: aggregates.spend(conn, K.BUDGET_SCOPE_PROJECT, "p3", *bounds), args.repeat)),
                    ("user budget, this month's spend", median_ms(lambda: old_spend(conn, L.user, "u7", *bounds), args.repeat),
                     median_ms(lambda: aggregates.spend(conn, K.BUDGET_SCOPE_USER, "u7", *bounds), args.repeat)),
                    ("/metrics scrape (harness_cost_usd_total)", median_ms(lambda: old_scrape(conn), args.repeat),
                     median_ms(lambda: generate_latest(registry), args.repeat)),
                ]  # fmt: skip
        finally:
            await store.close()
    print(f"\nledger: {args.rows:,} rows over 30 days ({rows_in_month:,} this month), {url.split(':')[0]}")
    print(f"{'read':<44}{'old ms':>10}{'new ms':>10}{'old/new':>10}")
    for name, old, new in figures:
        print(f"{name:<44}{old:>10.2f}{new:>10.2f}{old / new:>9.0f}x")
    print(
        "(the new scrape also computes harness_budget_remaining_usd; the old column is the ledger GROUP BY alone)"
    )


if __name__ == "__main__":
    asyncio.run(main())
