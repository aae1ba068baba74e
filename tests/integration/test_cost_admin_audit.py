"""Every price and budget change reaches the audit log as an ADMIN_CHANGE event, with who made it
and what changed, never a secret (cost + audit over real mTLS gRPC; the budget alerts' mesh)."""

from __future__ import annotations

from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2 as K

from tests.helpers.grpc import user_metadata
from tests.integration.test_cost_alerts import USD, mesh  # noqa: F401 (the fixture)
from tests.integration.test_registry_audit_feed import eventually

ADMIN_CHANGE = common_pb2.AUDIT_EVENT_KIND_ADMIN_CHANGE


async def cost_changes(m) -> list[common_pb2.AuditEvent]:
    flt = audit_pb2.AuditFilter(kind=ADMIN_CHANGE)
    resp = await m["audit_stub"].Query(audit_pb2.QueryRequest(filter=flt), metadata=m["auditor"])
    return [r.event for r in resp.records if r.event.source == "cost"]


async def test_price_and_budget_changes_are_audited_with_the_actor_and_no_secret(mesh, mint_token):  # noqa: F811
    m = mesh
    alice = (*user_metadata(mint_token("alice", "admin")), ("x-request-id", "req-price-1"))
    price = K.Price(kind=K.PRICE_KIND_MODEL_OUTPUT_TOKENS, subject="llama-3-8b", micro_usd=450_000)
    await m["cost_stub"].SetPrice(K.SetPriceRequest(price=price), metadata=alice)
    hook = m["hook"].url + "?token=s3cr3t-t0ken"  # a webhook URL may carry a credential
    budget = K.Budget(name="ledger-daily", scope=K.BUDGET_SCOPE_PROJECT, subject="ledger",
                      period=K.BUDGET_PERIOD_DAILY, limit_micro_usd=50 * USD, webhook_url=hook)  # fmt: skip
    await m["cost_stub"].SetBudget(K.SetBudgetRequest(budget=budget), metadata=alice)
    await m["cost_stub"].DeleteBudget(K.DeleteBudgetRequest(name="ledger-daily"), metadata=alice)

    events: list[common_pb2.AuditEvent] = []

    async def all_shipped() -> bool:
        nonlocal events
        events = [e for e in await cost_changes(m) if e.actor.user == "alice"]
        return len(events) == 3

    await eventually(all_shipped, 10.0)
    by_object = {(e.object, e.action): e for e in events}
    set_price = by_object[("price:model_output_tokens:llama-3-8b", "set")]
    assert set_price.details["micro_usd"] == 450_000 and set_price.correlation.request_id == "req-price-1"
    assert set_price.actor.auth_method == "jwt" and set_price.decision == common_pb2.DECISION_ALLOW
    set_budget = by_object[("budget:ledger-daily", "set")]
    assert set_budget.details["limit_micro_usd"] == 50 * USD and set_budget.details["webhook"] is True
    assert ("budget:ledger-daily", "delete") in by_object
    assert all("s3cr3t" not in str(e) and "hook" not in str(e.details).replace("webhook", "") for e in events)
    # The fixture's own price, set by a Harness service: the service is named.
    assert any(e.details["service"] == "ops" for e in await cost_changes(m) if not e.actor.user)


async def test_admin_changes_wait_out_an_audit_outage(mesh, mint_token):  # noqa: F811
    m = mesh
    alice = user_metadata(mint_token("alice", "admin"))
    await m["audit"].stop()
    price = K.Price(kind=K.PRICE_KIND_GPU_HOUR, subject="H100-SXM-80GB", micro_usd=2_400_000)
    await m["cost_stub"].SetPrice(K.SetPriceRequest(price=price), metadata=alice)
    await m["audit"].start()

    async def shipped() -> bool:
        return any(e.object == "price:gpu_hour:H100-SXM-80GB" for e in await cost_changes(m))

    await eventually(shipped, 15.0)
