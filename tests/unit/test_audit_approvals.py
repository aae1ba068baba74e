"""Approvals core on SQLite and PostgreSQL: lifecycle, audit records, double decision, expiry,
long poll, paging, idempotent requests and who may do what."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf import duration_pb2
from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2

from services.audit import lineage
from services.audit.approvals import Approvals
from services.audit.store import AuditStore
from services.common.context import Identity
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)

T0_US = 1_714_564_800 * 1_000_000
S = audit_pb2
ROUTER = Identity(service="router")
BOB = Identity(user="bob", roles=("approver",), auth_method="jwt")
ADMIN = Identity(user="root", roles=("admin",), auth_method="jwt")
AUDITOR = Identity(user="carol", roles=("auditor",), auth_method="jwt")
DAVE = Identity(user="dave", roles=("analyst",), auth_method="jwt")


class Clock:
    def __init__(self) -> None:
        self.us = T0_US

    def __call__(self) -> int:
        return self.us


@pytest.fixture
async def env(db_url):
    clock = Clock()
    store = await asyncio.to_thread(AuditStore, db_url, now_us=clock)
    yield Approvals(store), store, clock
    await store.close()


def ask(ttl_s: int = 60, key: str = "", **over) -> S.RequestApprovalRequest:
    fields = {
        "tool": "ledger",
        "action": "delete",
        "risk": common_pb2.RISK_CLASS_DELETE,
        "reason": "tool ledger requires approval for delete",
        **over,
    }
    a = S.Approval(
        requester=common_pb2.Actor(user="alice", agent="rpa-bot", agent_version="v3", project="finance"),
        correlation=common_pb2.Correlation(
            trace_id="t-ledger", session_id="s1", step_id="2", parent_event_id="tc1", request_id="r1"
        ),
        **fields,
    )
    a.arguments.update({"account": "4000", "card": "[BANK_CARD]"})
    return S.RequestApprovalRequest(approval=a, ttl=duration_pb2.Duration(seconds=ttl_s), request_key=key)


async def approval_records(store: AuditStore) -> list[S.AuditRecord]:
    flt = S.AuditFilter(kind=common_pb2.AUDIT_EVENT_KIND_APPROVAL)
    records, _ = await store.query(flt)
    return records


async def test_lifecycle_request_get_approve_is_audited(env):
    ap, store, clock = env
    opened = await ap.request(ROUTER, ask())
    assert opened.id and opened.state == S.APPROVAL_STATE_PENDING
    assert opened.requested_by == "router" and opened.reason.startswith("tool ledger")
    assert opened.expire_time.seconds - opened.create_time.seconds == 60
    assert opened.arguments["account"] == "4000" and not opened.HasField("decide_time")
    got = await ap.get(AUDITOR, opened.id)
    assert got == opened

    clock.us += 5_000_000
    decided = await ap.decide(BOB, opened.id, True, "checked with finance")
    assert decided.state == S.APPROVAL_STATE_APPROVED
    assert (decided.approver, decided.comment) == ("bob", "checked with finance")
    assert decided.decide_time.seconds == opened.create_time.seconds + 5
    assert await ap.get(ROUTER, opened.id) == decided

    records = await approval_records(store)
    assert [r.event.event_id for r in records] == [
        f"approval-{opened.id}-requested",
        f"approval-{opened.id}-approved",
    ]
    req, dec = (r.event for r in records)
    assert req.decision == common_pb2.DECISION_PENDING_APPROVAL and dec.decision == common_pb2.DECISION_ALLOW
    for ev in (req, dec):  # the requester's actor and correlation: lands in the call's lineage
        assert (ev.actor.user, ev.actor.agent, ev.actor.agent_version) == ("alice", "rpa-bot", "v3")
        assert (ev.correlation.trace_id, ev.correlation.step_id, ev.correlation.parent_event_id) == (
            "t-ledger", "2", "tc1",
        )  # fmt: skip
        assert (ev.tool, ev.action, ev.object, ev.source) == ("ledger", "delete", "tool:ledger", "audit")
        assert ev.details["approval_id"] == opened.id
    assert dec.details["approver"] == "bob" and dec.details["comment"] == "checked with finance"
    assert req.details["reason"].startswith("tool ledger") and "approver" not in req.details
    assert (await store.verify()).ok


async def test_reject_then_lineage_shows_approver_under_the_tool_call(env):
    ap, store, _ = env
    opened = await ap.request(ROUTER, ask())
    rejected = await ap.decide(ADMIN, opened.id, False, "ledgers are never deleted")
    assert rejected.state == S.APPROVAL_STATE_REJECTED and rejected.approver == "root"
    # The router's tool call record, stored after the approval records (lineage does not mind).
    call = common_pb2.AuditEvent(
        event_id="tc1",
        kind=common_pb2.AUDIT_EVENT_KIND_TOOL_CALL,
        actor=common_pb2.Actor(user="alice", agent="rpa-bot", agent_version="v3"),
        correlation=common_pb2.Correlation(trace_id="t-ledger", session_id="s1", step_id="2"),
        tool="ledger",
        action="delete",
        decision=common_pb2.DECISION_DENY,
    )
    await store.ingest([call])
    records, _ = await store.lineage_records("t-ledger", "")
    (user,) = lineage.build_tree(records)
    (agent,) = user.children
    (step,) = agent.children
    (tool,) = step.children
    assert (user.label, agent.label, step.label, tool.label) == (
        "user:alice", "agent:rpa-bot@v3", "step:2", "tool:ledger delete deny",
    )  # fmt: skip
    assert [c.label for c in tool.children] == [
        "approval:ledger delete pending_approval",
        "approval:ledger delete deny by:root",
    ]
    assert tool.children[1].record.event.details["comment"] == "ledgers are never deleted"


async def test_deciding_twice_or_after_expiry_names_the_state(env):
    ap, _, clock = env
    first = await ap.request(ROUTER, ask())
    await ap.decide(BOB, first.id, False, "no")
    with pytest.raises(FailedPrecondition, match="rejected by bob") as err:
        await ap.decide(ADMIN, first.id, True, "yes")
    assert err.value.trailers == {"approval-state": "rejected"}

    late = await ap.request(ROUTER, ask(ttl_s=30))
    clock.us += 30_000_000
    assert (await ap.get(ROUTER, late.id)).state == S.APPROVAL_STATE_EXPIRED
    with pytest.raises(FailedPrecondition, match="is expired"):
        await ap.decide(BOB, late.id, True, "too late")
    with pytest.raises(NotFound, match="nope"):
        await ap.decide(BOB, "nope", True, "")
    with pytest.raises(NotFound):
        await ap.get(ROUTER, "nope")


async def test_list_filters_by_state_and_pages(env):
    ap, _, clock = env
    ids = [(await ap.request(ROUTER, ask(ttl_s=10 if i == 0 else 600))).id for i in range(5)]
    await ap.decide(BOB, ids[1], True, "")
    await ap.decide(BOB, ids[2], False, "")
    clock.us += 10_000_000  # ids[0] expires

    async def states(state):
        items, token = await ap.list(AUDITOR, state)
        assert token == ""
        return [a.id for a in items]

    assert await states(S.APPROVAL_STATE_PENDING) == ids[3:]
    assert await states(S.APPROVAL_STATE_EXPIRED) == ids[:1]
    assert await states(S.APPROVAL_STATE_APPROVED) == ids[1:2]
    assert await states(S.APPROVAL_STATE_REJECTED) == ids[2:3]
    assert await states(0) == ids
    page, token = await ap.list(BOB, 0, common_pb2.PageRequest(page_size=2))
    assert [a.id for a in page] == ids[:2] and token
    rest, token2 = await ap.list(BOB, 0, common_pb2.PageRequest(page_size=10, page_token=token))
    assert [a.id for a in rest] == ids[2:] and token2 == ""
    assert page[0].state == S.APPROVAL_STATE_EXPIRED


async def test_request_key_makes_retries_idempotent(env):
    ap, store, _ = env
    a = await ap.request(ROUTER, ask(key="tc1"))
    b = await ap.request(ROUTER, ask(key="tc1"))
    c = await ap.request(ROUTER, ask(key="tc2"))
    assert a.id == b.id != c.id
    assert len(await approval_records(store)) == 2


async def test_long_poll_returns_on_decision_or_at_its_bound(env):
    ap, _, _ = env
    opened = await ap.request(ROUTER, ask())
    # Nobody decides: the wait ends at its bound, still pending (the test clock does not move).
    waiting = asyncio.create_task(ap.get(ROUTER, opened.id, wait_us=0))
    assert (await waiting).state == S.APPROVAL_STATE_PENDING
    waiter = asyncio.create_task(ap.get(ROUTER, opened.id, wait_us=30_000_000))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await ap.decide(BOB, opened.id, False, "no")
    got = await asyncio.wait_for(waiter, 10)
    assert got.state == S.APPROVAL_STATE_REJECTED


async def test_who_may_do_what(env):
    ap, _, _ = env
    with pytest.raises(Unauthenticated):
        await ap.request(Identity(), ask())
    for who in (DAVE, BOB, AUDITOR, Identity(agent="rpa-bot")):
        with pytest.raises(PermissionDenied, match="may not request approvals"):
            await ap.request(who, ask())
    with pytest.raises(PermissionDenied, match="on behalf of 'alice'"):
        await ap.request(ADMIN, ask())  # a person asks only for themselves, never "requested by bob"
    own = ask()
    own.approval.requester.user = ""
    opened = await ap.request(ADMIN, own)
    assert opened.requested_by == "root" and opened.requester.user == "root"
    with pytest.raises(PermissionDenied, match="root may not decide an approval they requested"):
        await ap.decide(ADMIN, opened.id, True, "self-service")
    with pytest.raises(PermissionDenied, match="may not read approvals"):
        await ap.get(DAVE, opened.id)
    with pytest.raises(PermissionDenied):
        await ap.list(Identity(agent="rpa-bot"))
    with pytest.raises(PermissionDenied):  # a user through the CLI's ops certificate: the user's roles count
        await ap.list(Identity(service="ops", user="dave", roles=("analyst",)))
    for who in (DAVE, AUDITOR):
        with pytest.raises(PermissionDenied, match="admin or approver role"):
            await ap.decide(who, opened.id, True, "")
    with pytest.raises(PermissionDenied, match="a user with"):
        await ap.decide(ROUTER, opened.id, True, "")  # a service is not a person
    alice = Identity(user="alice", roles=("approver",))
    for_alice = await ap.request(ROUTER, ask())  # the router asks for the user it serves
    with pytest.raises(PermissionDenied, match="alice may not decide an approval they requested"):
        await ap.decide(alice, for_alice.id, True, "")
    assert (await ap.get(AUDITOR, opened.id)).state == S.APPROVAL_STATE_PENDING


async def test_bad_requests(env):
    ap, _, _ = env
    with pytest.raises(InvalidArgument, match="tool"):
        await ap.request(ROUTER, ask(tool=""))
    with pytest.raises(InvalidArgument, match="action"):
        await ap.request(ROUTER, ask(action=""))
    with pytest.raises(InvalidArgument, match="ttl"):
        await ap.request(ROUTER, ask(ttl_s=-1))
    with pytest.raises(InvalidArgument, match="7 days"):
        await ap.request(ROUTER, ask(ttl_s=8 * 86400))
    default = S.RequestApprovalRequest(approval=ask().approval)  # no ttl: 15 minutes
    opened = await ap.request(ROUTER, default)
    assert opened.expire_time.seconds - opened.create_time.seconds == 900
    with pytest.raises(InvalidArgument, match="id"):
        await ap.get(ROUTER, "")
    with pytest.raises(InvalidArgument):
        await ap.list(ROUTER, 99)


async def test_an_expired_approval_is_recorded_once_and_cannot_be_granted(env):
    """The waiting caller learns EXPIRED; a late approver gets FAILED_PRECONDITION saying so; the
    log has one "expired" record, whoever saw it first (caller, approver or the sweep)."""
    ap, store, clock = env
    waited = await ap.request(ROUTER, ask(ttl_s=30))
    late = await ap.request(ROUTER, ask(ttl_s=30))
    swept = await ap.request(ROUTER, ask(ttl_s=30))
    kept = await ap.request(ROUTER, ask(ttl_s=600))
    clock.us += 30_000_000
    assert (await ap.get(ROUTER, waited.id, wait_us=5_000_000)).state == S.APPROVAL_STATE_EXPIRED
    with pytest.raises(FailedPrecondition, match=r"is expired.*nobody decided before it expired") as err:
        await ap.decide(BOB, late.id, True, "too late")
    assert err.value.trailers == {"approval-state": "expired"}
    with pytest.raises(FailedPrecondition, match="is expired"):
        await ap.decide(BOB, late.id, True, "again")
    assert await ap.expire_due() == 1  # only `swept` was still unrecorded
    assert await ap.expire_due() == 0
    records = [r.event for r in await approval_records(store)]
    expired = [e for e in records if e.event_id.endswith("-expired")]
    assert sorted(e.details["approval_id"] for e in expired) == sorted([waited.id, late.id, swept.id])
    assert all(e.decision == common_pb2.DECISION_DENY and e.details["state"] == "expired" for e in expired)
    assert "did not run" in expired[0].details["comment"]
    items, _ = await ap.list(AUDITOR, S.APPROVAL_STATE_EXPIRED)
    assert sorted(a.id for a in items) == sorted([waited.id, late.id, swept.id])
    assert (await ap.get(AUDITOR, kept.id)).state == S.APPROVAL_STATE_PENDING
    assert (await store.verify()).ok
