"""SetBudget over a real channel refuses a webhook the policy refuses (INVALID_ARGUMENT saying
why): loopback by address or by name, cloud metadata, a private network, a plain-http URL, a
host outside the allow-list; a public https address is accepted."""

from __future__ import annotations

import grpc
import pytest
from harness.cost.v1 import cost_pb2, cost_pb2_grpc

from services.cost.config import AlertConfig
from services.cost.webhooks import WebhookPolicy
from tests.helpers.cost import start_test_cost
from tests.helpers.grpc import user_metadata

K = cost_pb2


def budget(url: str) -> K.SetBudgetRequest:
    return K.SetBudgetRequest(budget=K.Budget(
        name="ledger-monthly", scope=K.BUDGET_SCOPE_PROJECT, subject="ledger", period=K.BUDGET_PERIOD_MONTHLY,
        limit_micro_usd=10_000_000, webhook_url=url,
    ))  # fmt: skip


@pytest.fixture
async def cost(tmp_path, test_auth, mint_token):
    async def start(policy: WebhookPolicy):
        running = await start_test_cost(
            tmp_path / policy.schemes[0], test_auth, alerts=AlertConfig(webhooks=policy)
        )
        channel = grpc.aio.insecure_channel(running.address)
        started.append((running, channel))
        return cost_pb2_grpc.CostStub(channel)

    started: list = []
    yield start, user_metadata(mint_token("ann", "admin"))
    for running, channel in started:
        await channel.close()
        await running.stop(0)


@pytest.mark.parametrize(
    "url, words",
    [
        ("https://127.0.0.1:8443/hook", "resolves to 127.0.0.1"),
        ("https://localhost/hook", "private, loopback"),
        ("https://169.254.169.254/latest/meta-data", "resolves to 169.254.169.254"),
        ("https://10.0.0.7/hook", "resolves to 10.0.0.7"),
        ("https://[::1]/hook", "resolves to ::1"),
        ("http://93.184.216.34/hook", "scheme 'http' is not allowed"),
    ],
)
async def test_refused_webhooks_are_invalid_argument(cost, url, words):
    start, admin = cost
    stub = await start(WebhookPolicy())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SetBudget(budget(url), metadata=admin)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "budget.webhook_url refused" in err.value.details() and words in err.value.details()
    assert list((await stub.ListBudgets(K.ListBudgetsRequest(), metadata=admin)).budgets) == []


async def test_allowed_webhooks_are_stored(cost):
    start, admin = cost
    stub = await start(WebhookPolicy())
    got = await stub.SetBudget(budget("https://93.184.216.34/hook"), metadata=admin)
    assert got.budget.webhook_url == "https://93.184.216.34/hook"
    # An allow-list of hosts: anything else is refused before any lookup.
    listed = await start(WebhookPolicy(schemes=("https", "http"), hosts=("hooks.corp.example",)))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await listed.SetBudget(budget("https://93.184.216.34/hook"), metadata=admin)
    assert (
        err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "not in the allowed hosts" in err.value.details()
    )
