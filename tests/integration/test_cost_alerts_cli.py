"""`harness budget alerts` against a real cost service on port 0 (no audit service: alerts still list)."""

from __future__ import annotations

import json
import time

import grpc
import pytest
from harness.cost.v1 import cost_pb2, cost_pb2_grpc

from services.cost.config import AlertConfig
from tests.helpers.cost import LOCAL_WEBHOOKS, start_test_cost
from tests.helpers.grpc import user_metadata
from tests.integration.test_cli_cost import cli  # noqa: F401  (the fixture: runs `harness` against `cost`)
from tests.integration.test_cost_alerts import USD, usage

K = cost_pb2


@pytest.fixture
async def cost(tmp_path, test_auth, mint_token):
    """The cost service with a 10 USD monthly budget of project ledger, spent to 90%."""
    running = await start_test_cost(tmp_path, test_auth, alerts=AlertConfig(webhooks=LOCAL_WEBHOOKS))
    admin = user_metadata(mint_token("svc", "admin"))
    async with grpc.aio.insecure_channel(running.address) as ch:
        stub = cost_pb2_grpc.CostStub(ch)
        price = K.Price(kind=K.PRICE_KIND_TOOL_CALL, subject="t", micro_usd=USD)
        price.effective_time.FromSeconds(int(time.time()) - 3600)
        await stub.SetPrice(K.SetPriceRequest(price=price), metadata=admin)
        for name, webhook in (("ledger-monthly", "http://127.0.0.1:9/hook"), ("other", "")):
            b = K.Budget(name=name, scope=K.BUDGET_SCOPE_PROJECT, subject="ledger" if webhook else "other",
                         period=K.BUDGET_PERIOD_MONTHLY, limit_micro_usd=10 * USD, webhook_url=webhook)  # fmt: skip
            await stub.SetBudget(K.SetBudgetRequest(budget=b), metadata=admin)

        batch = K.RecordRequest(events=[usage(f"e{i}") for i in range(9)])
        assert (await stub.Record(batch, metadata=admin)).accepted == 9
    yield running
    await running.stop(0)


async def test_budget_alerts_table_and_json(cli):  # noqa: F811
    res = await cli("budget", "alerts", "--format", "json")
    assert res.rc == 0, res.err
    rows = json.loads(res.out)
    assert [(r["budget"], r["percent"], r["spent_usd"], r["limit_usd"]) for r in rows] == [
        ("ledger-monthly", 80, "9.000000", "10.000000"),
        ("ledger-monthly", 50, "9.000000", "10.000000"),
    ]
    r = rows[0]
    assert r["id"].startswith("cost-alert-") and r["scope"] == "project" and r["period"] == "monthly"
    assert r["spent_micro_usd"] == 9 * USD and r["limit_reached"] is False and r["audit_shipped"] is False
    assert r["webhook_url"] == "http://127.0.0.1:9/hook" and r["webhook_state"] in ("pending", "failed")
    assert r["period_start"].endswith("00:00:00Z")

    res = await cli("budget", "alerts", "--budget", "ledger-monthly", "--limit", "1")
    assert res.rc == 0, res.err
    lines = res.out.splitlines()
    assert lines[0].split() == ["TIME", "BUDGET", "PERCENT", "SPENT_USD", "LIMIT_USD", "PERIOD_START", "AUDIT",
                                "WEBHOOK"]  # fmt: skip
    cells = lines[1].split()  # TIME and PERIOD_START are two words each
    assert len(lines) == 2 and cells[2:6] == ["ledger-monthly", "80%", "9.000000", "10.000000"]
    assert cells[8] == "pending"  # audit: no audit service configured
    assert cells[9] in ("pending", "failed")  # port 9: nothing listens, so it is being retried
    # --json with no --format picks JSON; a budget without alerts lists none.
    assert json.loads((await cli("budget", "alerts", "--json", "--budget", "other")).out) == []
    assert (await cli("budget", "alerts", "--budget", "other")).out.strip() == "(none)"

    res = await cli("budget", "alerts", "--budget", "nope")
    assert res.rc == 1 and res.err.startswith("harness: NOT_FOUND: ") and "nope" in res.err
    res = await cli("budget", "alerts", user="dave")
    assert res.rc == 1 and res.err.startswith("harness: PERMISSION_DENIED: ")
