"""Who changed the registry: change rows carry the caller, and become ADMIN_CHANGE audit events.

Store-level, on SQLite and PostgreSQL (the `db_url` fixture); the feed over real gRPC is in
tests/integration/test_registry_audit_feed.py.
"""

from __future__ import annotations

import asyncio

import pytest
from harness.common.v1 import common_pb2

from services.common.context import Identity, RequestContext, reset_current, set_current
from services.registry import domain as d
from services.registry.audit_feed import change_event
from services.registry.policy import Policy
from services.registry.store import Store

TD = "harness.local"
ALICE = Identity(user="alice", auth_method="jwt", roles=("admin",))
OPS = Identity(service="ops")


@pytest.fixture
def store(db_url):
    s = Store(db_url)
    yield s
    s.close()


def _as(identity: Identity, request_id: str = "req-1", trace_id: str = "ab" * 16):
    return set_current(RequestContext(request_id, trace_id, "cd" * 8, identity=identity))


async def test_change_rows_name_the_caller_through_worker_threads(store):
    """The servicer runs store calls via asyncio.to_thread: the request context follows."""
    token = _as(OPS, "seed-1")
    try:
        await asyncio.to_thread(store.create_team, d.Team("finance"))
        await asyncio.to_thread(store.create_project, d.Project("ledger", "finance"))
        await asyncio.to_thread(store.create_user, d.User("bob", team="finance"))
    finally:
        reset_current(token)
    token = _as(ALICE, "req-7", "12" * 16)
    try:
        await asyncio.to_thread(store.create_agent, d.Agent("bot", "ledger", type="rag"), TD)
        await asyncio.to_thread(store.set_user_limits, "bob", 60, 0)
    finally:
        reset_current(token)
    team, project, _, created, state = store.change_records(0, 10)
    assert (team.actor_service, team.actor_user, team.auth_method, team.request_id) == (
        "ops",
        "",
        "mtls",
        "seed-1",
    )
    assert project.action == team.action == "create"
    assert (created.kind, created.key, created.action) == ("agent", "bot", "create")
    assert (state.actor_user, state.auth_method, state.actor_service) == ("alice", "jwt", "")
    assert (state.request_id, state.trace_id, state.action) == ("req-7", "12" * 16, "update")


def test_actions_are_derived_from_the_change(store):
    token = _as(ALICE)
    try:
        store.create_team(d.Team("finance"))
        store.create_project(d.Project("ledger", "finance"))
        store.create_user(d.User("bob", team="finance"))
        store.set_user_limits("bob", 10, 0)
        key, secret = store.create_api_key("bob", "ledger")
        store.revoke_api_key(key.id)
        store.register_model(d.Model("m", "m", "f", 1, "fp16", 1, 1024))
        store.register_tool(d.Tool("ledger", "1", "http://x/ledger", actions=(d.ToolAction("read", "read"),)))
        store.create_agent(d.Agent("bot", "ledger"), TD)
        store.create_agent_version("bot", d.AgentVersion("v1", ("m",), ("ledger",)))
        policy = Policy(store)
        rule = d.PolicyRule("g", ("bob", "role:analyst", "ledger"))
        policy.add(rule)
        policy.remove(rule)
    finally:
        reset_current(token)
    got = [(c.kind, c.action) for c in store.change_records(0, 100)]
    assert got == [
        ("team", "create"),
        ("project", "create"),
        ("user", "create"),
        ("user", "update"),
        ("api_key", "create"),
        ("api_key", "update"),
        ("model", "create"),
        ("tool", "create"),
        ("agent", "create"),
        ("agent", "update"),  # a new version changes the agent
        ("policy", "create"),
        ("policy", "delete"),
    ]
    events = [change_event(c) for c in store.change_records(0, 100)]
    assert secret not in str(events)  # API keys are named by id only
    assert events[4].object == f"api_key:{key.id}"


def test_change_event_fields(store):
    token = _as(ALICE, "req-9", "34" * 16)
    try:
        store.create_team(d.Team("finance"))
    finally:
        reset_current(token)
    (row,) = store.change_records(0, 10)
    event = change_event(row)
    assert event.event_id == f"registry-change-{row.revision}"
    assert event.kind == common_pb2.AUDIT_EVENT_KIND_ADMIN_CHANGE
    assert (event.actor.user, event.actor.auth_method) == ("alice", "jwt")
    assert (event.correlation.request_id, event.correlation.trace_id) == ("req-9", "34" * 16)
    assert (event.object, event.action, event.source) == ("team:finance", "create", "registry")
    assert event.decision == common_pb2.DECISION_ALLOW
    assert event.time.ToDatetime().replace(microsecond=0) == row.time.replace(tzinfo=None, microsecond=0)
    assert dict(event.details) == {
        "revision": row.revision,
        "kind": "team",
        "key": "finance",
        "deleted": False,
    }


def test_audit_cursor_only_moves_forward(store):
    assert store.audit_cursor() == 0
    assert store.set_audit_cursor(5) == 5
    assert store.set_audit_cursor(3) == 5  # a slower replica does not move it back
    assert store.set_audit_cursor(8) == 8 and store.audit_cursor() == 8


def test_change_records_page_in_revision_order(store):
    for name in ("a", "b", "c"):
        store.create_team(d.Team(name))
    assert [c.key for c in store.change_records(0, 2)] == ["a", "b"]
    first = store.change_records(0, 2)[-1].revision
    assert [c.key for c in store.change_records(first, 2)] == ["c"]
