"""Scale-out as the Kubernetes production overlay runs it, on one machine: four routers, two
audit and two cost replicas on one PostgreSQL and one Redis (schema migrated once beforehand,
every service started with --schema check), each router shipping to "its" audit and cost
replica. Concurrent calls spread over all four routers must keep, across all of them:
- a user's budget: the settled spend never exceeds the hard limit, every refusal names it;
- a user's rate limit: no more calls admitted than the limit allows over the run;
- exactly-once audit and usage: every admitted call is in the ledger once and has one model-call
  audit record, refused calls bill nothing, and the one hash chain both audit replicas append to
  verifies; this holds although one audit and one cost replica are killed (SIGKILL) mid-run and
  restarted, their routers' outboxes holding the events meanwhile."""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from harness.audit.v1 import audit_pb2, audit_pb2_grpc
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2, cost_pb2_grpc
from harness.router.v1 import router_pb2, router_pb2_grpc

from services.common.server import open_channel
from tests.helpers.router_budgets import until_routers_read_budgets
from tests.helpers.scaleout import (
    RPM,
    Mesh,
    agent_channel,
    build_mesh,
    migrated_databases,
    seed,
    start_all,
    token,
    until_serving,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

FITS = 8  # the budget fits about this many calls at their maximum cost
MAX_COST = re.compile(r"this request may cost up to \$([0-9.,]+)")


@pytest.fixture
async def mesh(tmp_path: Path, new_postgres_db, redis_url):
    urls = migrated_databases(new_postgres_db)
    prefix = f"harness-test:{uuid.uuid4().hex[:10]}:"
    m = build_mesh(tmp_path / "mesh", urls, redis_url, prefix, routers=4, audits=2, costs=2)
    try:
        await start_all(m)
        await seed(m)
        yield m
    finally:
        m.stop()
        import redis

        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


async def call(channel, metadata, i: int):
    """One Generate; the final summary's request id, or the error."""
    req = router_pb2.GenerateRequest(
        prompt=f"Summarise scale note {i:03d}", sampling=common_pb2.SamplingParams(max_tokens=16)
    )
    try:
        chunks = [
            c async for c in router_pb2_grpc.RouterStub(channel).Generate(req, metadata=metadata, timeout=60)
        ]
    except grpc.aio.AioRpcError as e:
        return e
    return next(c.summary.request_id for c in chunks if c.final)


async def until_routable(m: Mesh, channels, metadata) -> set[str]:
    """Every router has the agent, the model's endpoint and the JWT settings (watch streams);
    returns the ids of the calls that proved it."""
    deadline, ids = time.monotonic() + 120, set()
    for i, ch in enumerate(channels):
        while True:
            got = await call(ch, metadata, 900 + i)
            if isinstance(got, str):
                ids.add(got)
                break
            assert time.monotonic() < deadline, (
                f"router never served: {got.code()} {got.details()}\n{m.logs()}"
            )
            await asyncio.sleep(0.5)
    return ids


def router_metrics(m: Mesh) -> list[str]:
    return [f"http://127.0.0.1:{r.metrics}/metrics" for r in m.routers]


async def fan_out(channels, metadata, n: int) -> list:
    return await asyncio.gather(*(call(channels[i % len(channels)], metadata, i) for i in range(n)))


async def per_call_max_cost(m: Mesh, channel, cost, budget, metadata) -> int:
    """Micro-USD a router reserves for one call, read from the refusal of a budget with no room."""
    budget.limit_micro_usd = 1
    await cost.SetBudget(cost_pb2.SetBudgetRequest(budget=budget), timeout=10)
    await until_routers_read_budgets(router_metrics(m))  # they re-read budgets every 0.5 s here
    got = await call(channel, metadata, 0)
    assert isinstance(got, grpc.aio.AioRpcError), "a budget of 1 micro-USD admitted a call"
    found = MAX_COST.search(got.details() or "")
    assert got.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and found, got.details()
    return int(Decimal(found.group(1).replace(",", "")) * 1_000_000)


async def test_budgets_rate_limits_and_exactly_once_across_replicas(mesh: Mesh):
    m = mesh
    channels = [agent_channel(m, i) for i in range(4)]
    ops_channel = open_channel(m.addr("cost-1"), m.tls("cli"))
    try:
        budgeted, limited = token(m, "budgeted"), token(m, "limited")
        # The proving calls are billed before the budget exists: wait until the ledger has them.
        await until_shipped(m, {"budgeted": await until_routable(m, channels, budgeted)})
        await until_quiet(m, "budgeted")  # calls cut while routers came up are billed too: let them land
        cost = cost_pb2_grpc.CostStub(ops_channel)
        budget = cost_pb2.Budget(
            name="scale-budgeted", scope=cost_pb2.BUDGET_SCOPE_USER, subject="budgeted",
            period=cost_pb2.BUDGET_PERIOD_DAILY, limit_micro_usd=1,
        )  # fmt: skip
        each = await per_call_max_cost(m, channels[0], cost, budget, budgeted)
        room = FITS * each
        before = await spent(m, "budgeted")
        budget.limit_micro_usd = before + room
        await cost.SetBudget(cost_pb2.SetBudgetRequest(budget=budget), timeout=10)
        await until_routers_read_budgets(router_metrics(m))

        # Budget and rate limit under load, with one audit and one cost replica killed meanwhile.
        kill_and_restart = asyncio.create_task(crash_one_audit_and_one_cost(m))
        started = time.monotonic()
        budget_out, limit_out = await asyncio.gather(
            fan_out(channels, budgeted, 48), fan_out(channels, limited, 40)
        )
        elapsed = time.monotonic() - started
        await kill_and_restart

        admitted = [r for r in budget_out if isinstance(r, str)]
        refused = [r for r in budget_out if not isinstance(r, str)]
        assert admitted and refused, f"{len(admitted)} admitted, {len(refused)} refused"
        for e in refused:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
            assert "budget 'scale-budgeted'" in e.details(), e.details()

        limit_admitted = [r for r in limit_out if isinstance(r, str)]
        for e in (r for r in limit_out if not isinstance(r, str)):
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit" in e.details(), e.details()
        allowed = RPM + math.ceil(elapsed * RPM / 60) + 1  # the burst plus what refilled during the run
        assert RPM <= len(limit_admitted) <= allowed, (len(limit_admitted), allowed, elapsed)

        # Exactly once: every admitted call billed once and audited once, after the outboxes drain.
        calls = {"budgeted": set(admitted), "limited": set(limit_admitted)}
        await until_shipped(m, calls)
        for user, ids in calls.items():
            assert await ledger_counts(m, user, ids) == dict.fromkeys(ids, 1), user
            assert await model_call_counts(m, user, ids) == dict.fromkeys(ids, 1), user
        # The run's calls settle within the room the budget left them. (Compared per request id: a
        # call cut while the routers were coming up is billed too, possibly after `before` was read.)
        run_spend = await spent(m, "budgeted", ids=set(admitted))
        assert run_spend <= room, f"the run settled {run_spend} in a room of {room}\n{m.warnings()}"
        async with open_channel(m.addr("audit-1"), m.tls("cli")) as audit_channel:
            verdict = await audit_pb2_grpc.AuditStub(audit_channel).Verify(
                audit_pb2.VerifyRequest(), metadata=token(m, "auditor", "auditor"), timeout=60
            )
        assert verdict.ok and verdict.checked >= len(admitted) + len(limit_admitted), verdict
    finally:
        for ch in channels:
            await ch.close()
        await ops_channel.close()


async def crash_one_audit_and_one_cost(m: Mesh) -> None:
    """SIGKILL audit-0 and cost-0 (routers 0 and 2 ship to them) while calls run; restart them."""
    await asyncio.sleep(1.0)
    for name in ("audit-0", "cost-0"):
        m.procs[name].kill()
    await asyncio.sleep(3.0)
    for name in ("audit-0", "cost-0"):
        m.procs[name].start()
    deadline = time.monotonic() + 120
    for name in ("audit-0", "cost-0"):
        await until_serving(m, m.procs[name], deadline)


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url)


async def ledger_counts(m: Mesh, user: str, ids: set[str]) -> dict[str, int]:
    q = sa.text('SELECT request_id, count(*) FROM usage_ledger WHERE "user" = :u GROUP BY request_id')
    return await asyncio.to_thread(_counts, m.db_urls["cost"], q, user, ids)


async def model_call_counts(m: Mesh, user: str, ids: set[str]) -> dict[str, int]:
    q = sa.text(
        'SELECT request_id, count(*) FROM audit_records WHERE "user" = :u AND kind = :k GROUP BY request_id'
    )
    return await asyncio.to_thread(
        _counts, m.db_urls["audit"], q, user, ids, common_pb2.AUDIT_EVENT_KIND_MODEL_CALL
    )


def _counts(url: str, q, user: str, ids: set[str], kind: int | None = None) -> dict[str, int]:
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            params = {"u": user, **({"k": kind} if kind is not None else {})}
            rows = dict(conn.execute(q, params).all())
    finally:
        engine.dispose()
    # probe calls made before the run (until_routable, the cost probe) are billed too: only the
    # run's calls are compared, but nothing else may carry a run call's id
    return {rid: n for rid, n in rows.items() if rid in ids} | {rid: 0 for rid in ids if rid not in rows}


async def until_shipped(m: Mesh, calls: dict[str, set[str]]) -> None:
    deadline = time.monotonic() + 120
    while True:
        done = True
        for user, ids in calls.items():
            billed = await ledger_counts(m, user, ids)
            audited = await model_call_counts(m, user, ids)
            done &= all(billed.values()) and all(audited.values())
        if done or time.monotonic() > deadline:
            return
        await asyncio.sleep(1.0)


async def until_quiet(m: Mesh, user: str) -> None:
    """The user's ledger spend unchanged for three seconds running (outboxes drained)."""
    last, stable, deadline = None, 0, time.monotonic() + 60
    while stable < 3 and time.monotonic() < deadline:
        now = await spent(m, user)
        stable = stable + 1 if now == last else 0
        last = now
        await asyncio.sleep(1.0)


async def spent(m: Mesh, user: str, ids: set[str] | None = None) -> int:
    """The user's settled spend in the ledger (only the calls `ids`, when given)."""
    q = sa.text('SELECT request_id, cost_micro_usd FROM usage_ledger WHERE "user" = :u')

    def read() -> int:
        engine = _engine(m.db_urls["cost"])
        try:
            with engine.connect() as conn:
                rows = conn.execute(q, {"u": user}).all()
        finally:
            engine.dispose()
        return sum(cost for rid, cost in rows if ids is None or rid in ids)

    return await asyncio.to_thread(read)
