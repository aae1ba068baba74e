"""The cost service's /metrics: `harness_cost_usd_total` and `harness_budget_remaining_usd` are read
from the ledger and budgets at scrape time (so they agree with Report/GetBudget, across restarts)."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import grpc
import pytest
from google.protobuf import timestamp_pb2
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2, cost_pb2_grpc
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from services.common.config import ServerConfig
from services.cost.config import CostConfig
from services.cost.metrics import OTHER, CostCollector
from services.cost.seed import seed_cost
from services.cost.servicer import start_cost
from services.cost.store import CostStore
from tests.helpers.grpc import user_metadata

SEED = {
    "cost": {
        "prices": [
            {"kind": "model_input_tokens", "subject": "llama-3-8b", "usd": 0.20},
            {"kind": "model_output_tokens", "subject": "llama-3-8b", "usd": 0.60},
            {"kind": "model_input_tokens", "subject": "qwen-7b", "usd": 0.10},
            {"kind": "tool_call", "subject": "ledger", "usd": 0.001},
        ],
        "budgets": [
            {"name": "ledger-monthly", "scope": "project", "subject": "ledger", "period": "monthly",
             "limit_usd": 500},
            {"name": "rpa-life", "scope": "agent", "subject": "rpa-bot", "period": "lifetime", "limit_usd": 0.1},
            {"name": "idle-team", "scope": "team", "subject": "nobody", "period": "daily", "limit_usd": 7},
        ],
    }
}  # fmt: skip


def usage(event_id: str, agent: str, *, team="finance", project="ledger", model="llama-3-8b", inp=0, out=0,
          tool=""):  # fmt: skip
    t = timestamp_pb2.Timestamp()
    t.GetCurrentTime()
    return common_pb2.UsageEvent(
        event_id=event_id, time=t, model=model, tool=tool,
        actor=common_pb2.Actor(user="alice", team=team, project=project, agent=agent),
        usage=common_pb2.Usage(input_tokens=inp, output_tokens=out),
    )  # fmt: skip


def events() -> list[common_pb2.UsageEvent]:
    return [
        usage("e1", "ledger-bot", inp=1_000_000, out=500_000),  # 0.50
        usage("e2", "ledger-bot", inp=2_000_000),  # 0.40
        usage("e3", "rpa-bot", inp=1_000_000),  # 0.20
        usage("e4", "rpa-bot", model="", tool="ledger"),  # 0.001
        usage("e5", "hr-bot", team="people", project="payroll", model="qwen-7b", inp=3_000_000),  # 0.30
        usage("e6", "hr-bot", team="people", project="payroll", model="unpriced-model", inp=5),  # unpriced: 0
    ]


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """{family name: {sorted label items: value}} of one /metrics scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def cost_key(team: str, project: str, agent: str, model: str) -> tuple:
    return tuple(sorted({"team": team, "project": project, "agent": agent, "model": model}.items()))


async def test_scrape_reports_ledger_cost_and_budget_remaining(db_url, test_auth, mint_token):
    config = CostConfig(
        server=ServerConfig(name="cost", port=0, metrics_port=0, auth=test_auth), db_url=db_url
    )
    running = await start_cost(config, metrics_registry=CollectorRegistry())
    admin = user_metadata(mint_token("svc", "admin"))
    try:
        assert running.metrics_port
        before = await asyncio.to_thread(scrape, running.metrics_port)
        assert before["harness_cost_metrics_up"] == {(): 1.0}
        assert "harness_cost_usd_total" not in before  # no usage yet: no series
        async with grpc.aio.insecure_channel(running.address) as ch:
            stub = cost_pb2_grpc.CostStub(ch)
            await seed_cost(stub, SEED, admin)

            assert (await stub.Record(cost_pb2.RecordRequest(events=events()), metadata=admin)).accepted == 6
            resent = await stub.Record(cost_pb2.RecordRequest(events=events()[:2]), metadata=admin)
            assert (resent.accepted, resent.duplicates) == (0, 2)  # counted once

        got = await asyncio.to_thread(scrape, running.metrics_port)
        assert got["harness_cost_usd_total"] == pytest.approx(
            {
                cost_key("finance", "ledger", "ledger-bot", "llama-3-8b"): 0.9,
                cost_key("people", "payroll", "hr-bot", "qwen-7b"): 0.3,
                cost_key("finance", "ledger", "rpa-bot", "llama-3-8b"): 0.2,
                cost_key("finance", "ledger", "rpa-bot", ""): 0.001,
            }
        )
        assert got["harness_budget_remaining_usd"] == pytest.approx(
            {
                (("budget", "idle-team"),): 7.0,
                (("budget", "ledger-monthly"),): 500 - 1.101,
                (("budget", "rpa-life"),): 0.1 - 0.201,  # overspent: negative
            }
        )
        # What the budget alert rules read: limit, spend this period, and when the period ends.
        assert got["harness_budget_limit_usd"] == pytest.approx(
            {
                (("budget", "idle-team"),): 7.0,
                (("budget", "ledger-monthly"),): 500.0,
                (("budget", "rpa-life"),): 0.1,
            }
        )
        assert got["harness_budget_spent_usd"] == pytest.approx(
            {
                (("budget", "idle-team"),): 0.0,
                (("budget", "ledger-monthly"),): 1.101,
                (("budget", "rpa-life"),): 0.201,
            }
        )
        ends = got["harness_budget_period_end_timestamp_seconds"]
        assert set(ends) == {(("budget", "idle-team"),), (("budget", "ledger-monthly"),)}  # lifetime: none
        now = time.time()
        assert now < ends[(("budget", "idle-team"),)] <= now + 86400 + 3600
        assert now < ends[(("budget", "ledger-monthly"),)] <= now + 31 * 86400 + 3600

        # Cardinality bound: the costliest label sets, the rest summed into one __other__ series.
        store = await CostStore.open(db_url)
        try:
            registry = CollectorRegistry()
            registry.register(CostCollector(store, max_series=2))
            assert registry.get_sample_value(
                "harness_cost_usd_total", dict(cost_key("finance", "ledger", "ledger-bot", "llama-3-8b"))
            ) == pytest.approx(0.9)
            other = {k: OTHER for k in ("team", "project", "agent", "model")}
            assert registry.get_sample_value("harness_cost_usd_total", other) == pytest.approx(0.201)
            samples = [s for m in registry.collect() if m.name == "harness_cost_usd" for s in m.samples]
            assert len(samples) == 3 and sum(s.value for s in samples) == pytest.approx(1.401)
        finally:
            await store.close()
    finally:
        await running.stop(0)
