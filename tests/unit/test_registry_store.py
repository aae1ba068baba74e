"""Registry store and casbin policy, on SQLite and PostgreSQL (the `db_url` fixture)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)
from services.registry import domain as d
from services.registry.policy import Policy
from services.registry.store import Store

TD = "harness.local"


@pytest.fixture
def store(db_url):
    s = Store(db_url)
    yield s
    s.close()


@pytest.fixture
def seeded(store):
    """A team, a project, a user, a model, a tool and an agent with one version."""
    store.create_team(d.Team("finance", "Finance"))
    store.create_project(d.Project("ledger", "finance"))
    store.create_user(d.User("alice", email="alice@example.com", team="finance", roles=("admin",)))
    store.register_model(d.Model("llama-3-8b", "llama-3-8b-instruct", "llama-3", 8, "fp16", 16, 8192))
    store.register_tool(d.Tool("ledger", "1", "http://x/ledger", actions=(d.ToolAction("read", "read"),)))
    store.create_agent(d.Agent("demo-agent", "ledger", type="rag"), TD)
    store.create_agent_version("demo-agent", d.AgentVersion("v1", ("llama-3-8b",), ("ledger",)))
    return store


def test_tenancy_roundtrip_and_conflicts(store):
    team = store.create_team(d.Team("finance", "Finance"))
    assert team.display_name == "Finance" and team.create_time is not None
    assert team.create_time.tzinfo is not None
    with pytest.raises(AlreadyExists, match="finance"):
        store.create_team(d.Team("finance"))
    with pytest.raises(InvalidArgument, match="lowercase"):
        store.create_team(d.Team("Bad_Name"))
    with pytest.raises(NotFound, match="team 'nope'"):
        store.create_project(d.Project("ledger", "nope"))
    store.create_project(d.Project("ledger", "finance"))
    store.create_user(d.User("bob", team="finance"))
    assert store.get_user("bob").team == "finance"
    with pytest.raises(NotFound, match="'carol'"):
        store.get_user("carol")
    projects, nxt = store.list_projects("finance", d.Page())
    assert [p.name for p in projects] == ["ledger"] and nxt is None
    assert store.list_projects("other", d.Page())[0] == []


def test_paging_walks_every_item_once(store):
    for i in range(5):
        store.create_team(d.Team(f"t{i}"))
    seen, offset = [], 0
    while True:
        teams, nxt = store.list_teams(d.Page(size=2, offset=offset))
        seen += [t.name for t in teams]
        if nxt is None:
            break
        offset = nxt
    assert seen == ["t0", "t1", "t2", "t3", "t4"]


def test_api_key_lifecycle(seeded):
    key, secret = seeded.create_api_key("alice", "ledger", "ci")
    assert secret.startswith(f"hk_{key.id}_") and len(secret) > 40
    got_key, user = seeded.authenticate_api_key(secret)
    assert got_key.id == key.id and user.name == "alice" and got_key.project == "ledger"
    with pytest.raises(Unauthenticated, match="not valid"):
        seeded.authenticate_api_key(secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    with pytest.raises(Unauthenticated, match="malformed"):
        seeded.authenticate_api_key("garbage")
    revoked = seeded.revoke_api_key(key.id)
    assert revoked.revoke_time is not None
    assert seeded.revoke_api_key(key.id).revoke_time == revoked.revoke_time
    with pytest.raises(Unauthenticated, match="revoked"):
        seeded.authenticate_api_key(secret)
    with pytest.raises(InvalidArgument, match="past"):
        seeded.create_api_key("alice", "ledger", expire_time=d.now() - timedelta(seconds=1))
    with pytest.raises(NotFound, match="project 'nope'"):
        seeded.create_api_key("alice", "nope")
    keys, _ = seeded.list_api_keys("alice", d.Page())
    assert [k.id for k in keys] == [key.id]


def test_expired_api_key_is_refused(seeded):
    key, secret = seeded.create_api_key("alice", "ledger", expire_time=d.now() + timedelta(seconds=60))
    seeded.authenticate_api_key(secret)
    with seeded._tx() as s:  # age the key instead of sleeping
        from services.registry.models import ApiKeyRow

        s.get(ApiKeyRow, key.id).expire_time = d.now() - timedelta(seconds=1)
    with pytest.raises(Unauthenticated, match="expired"):
        seeded.authenticate_api_key(secret)


def test_agent_create_defaults_and_validation(seeded):
    agent = seeded.get_agent("demo-agent")
    assert agent.spiffe_id == f"spiffe://{TD}/agent/demo-agent"
    assert agent.state == "registered" and agent.type == "rag"
    assert agent.traffic == (d.TrafficWeight("v1", 100),)
    assert agent.versions[0].models == ("llama-3-8b",) and agent.revision > 0
    with pytest.raises(NotFound, match="project 'nope'"):
        seeded.create_agent(d.Agent("other", "nope"), TD)
    with pytest.raises(InvalidArgument, match="spiffe_id"):
        seeded.create_agent(d.Agent("other", "ledger", spiffe_id="spiffe://evil/agent/other"), TD)
    with pytest.raises(AlreadyExists):
        seeded.create_agent(d.Agent("demo-agent", "ledger"), TD)
    with pytest.raises(NotFound, match="agent 'ghost'"):
        seeded.get_agent("ghost")


def test_agent_version_requires_catalog_entries(seeded):
    with pytest.raises(NotFound, match="model 'gpt-x'"):
        seeded.create_agent_version("demo-agent", d.AgentVersion("v2", ("gpt-x",)))
    with pytest.raises(NotFound, match="tool 'ledger@9'"):
        seeded.create_agent_version("demo-agent", d.AgentVersion("v2", ("llama-3-8b",), ("ledger@9",)))
    with pytest.raises(AlreadyExists, match="v1"):
        seeded.create_agent_version("demo-agent", d.AgentVersion("v1", ("llama-3-8b",)))
    agent = seeded.create_agent_version("demo-agent", d.AgentVersion("v2", ("llama-3-8b",), ("ledger@1",)))
    assert [v.version for v in agent.versions] == ["v1", "v2"]
    assert agent.traffic == (d.TrafficWeight("v1", 100),)  # only the first version gets traffic


def test_lifecycle_transitions(seeded):
    assert seeded.set_agent_state("demo-agent", "online").state == "online"
    with pytest.raises(FailedPrecondition, match="can go to: draining"):
        seeded.set_agent_state("demo-agent", "retired")
    seeded.set_agent_state("demo-agent", "draining")
    # A drain can be called off: draining -> online (what `harness agents state X online` does).
    assert seeded.set_agent_state("demo-agent", "online").state == "online"
    seeded.set_agent_state("demo-agent", "draining")
    seeded.set_agent_state("demo-agent", "offline")
    seeded.set_agent_state("demo-agent", "online")
    for s in ("draining", "offline", "retired"):
        seeded.set_agent_state("demo-agent", s)
    with pytest.raises(FailedPrecondition, match="retired is final"):
        seeded.set_agent_state("demo-agent", "online")
    with pytest.raises(InvalidArgument):
        seeded.set_agent_state("demo-agent", "sleeping")


def test_traffic_split_and_rollback(seeded):
    seeded.create_agent_version("demo-agent", d.AgentVersion("v2", ("llama-3-8b",)))
    with pytest.raises(FailedPrecondition, match="roll back"):
        seeded.rollback_traffic_split("demo-agent")
    with pytest.raises(InvalidArgument, match="sum to 90"):
        seeded.set_traffic_split("demo-agent", [d.TrafficWeight("v1", 80), d.TrafficWeight("v2", 10)])
    with pytest.raises(NotFound, match="no version 'v3'"):
        seeded.set_traffic_split("demo-agent", [d.TrafficWeight("v3", 100)])
    canary = [d.TrafficWeight("v1", 90), d.TrafficWeight("v2", 10)]
    assert seeded.set_traffic_split("demo-agent", canary).traffic == tuple(canary)
    assert seeded.rollback_traffic_split("demo-agent").traffic == (d.TrafficWeight("v1", 100),)
    with pytest.raises(FailedPrecondition):
        seeded.rollback_traffic_split("demo-agent")


def test_catalog_validation(store):
    with pytest.raises(InvalidArgument, match="risk"):
        store.register_tool(d.Tool("t", actions=(d.ToolAction("x", "explode"),)))
    with pytest.raises(InvalidArgument, match="at least one action"):
        store.register_tool(d.Tool("t"))
    store.register_model(d.Model("qwen2.5-7b"))
    assert store.list_models(d.Page())[0][0].triton_model == "qwen2.5-7b"  # defaults to the name
    with pytest.raises(AlreadyExists):
        store.register_model(d.Model("qwen2.5-7b"))


def test_policy_decisions_name_the_rule(seeded):
    policy = Policy(seeded)
    assert policy.add(d.PolicyRule("p", ("role:analyst", "ledger", "agent:*", "invoke")))
    assert not policy.add(d.PolicyRule("p", ("role:analyst", "ledger", "agent:*", "invoke", "allow")))
    policy.add(d.PolicyRule("g", ("alice", "role:analyst", "ledger")))
    policy.add(d.PolicyRule("g", ("mallory", "role:analyst", "ledger")))
    policy.add(d.PolicyRule("p", ("mallory", "ledger", "agent:demo-agent", "invoke", "deny")))

    assert policy.check("alice", "ledger", "agent:demo-agent", "invoke") == (
        True,
        "p, role:analyst, ledger, agent:*, invoke, allow",
    )
    assert policy.check("mallory", "ledger", "agent:demo-agent", "invoke") == (
        False,
        "p, user:mallory, ledger, agent:demo-agent, invoke, deny",
    )
    assert policy.check("bob", "ledger", "agent:demo-agent", "invoke") == (False, "")
    assert policy.check("alice", "other", "agent:demo-agent", "invoke") == (False, "")
    assert policy.check("alice", "ledger", "agent:demo-agent", "delete")[0] is False

    # A second instance (another replica) sees the rules, and sees later changes too.
    replica = Policy(seeded)
    assert replica.check("alice", "ledger", "agent:demo-agent", "invoke")[0]
    assert policy.remove(d.PolicyRule("g", ("alice", "role:analyst", "ledger")))
    assert not policy.remove(d.PolicyRule("g", ("alice", "role:analyst", "ledger")))
    assert replica.check("alice", "ledger", "agent:demo-agent", "invoke") == (False, "")
    ledger_rules = {r.csv() for r in replica.list("ledger")}
    assert "g, user:mallory, role:analyst, ledger" in ledger_rules and len(ledger_rules) == 3


@pytest.mark.parametrize(
    ("ptype", "values", "match"),
    [
        ("x", ("a", "b", "c"), "policy type"),
        ("p", ("a", "ledger", "agent:x"), "5 values"),
        ("p", ("a", "ledger", "file:x", "invoke"), "object"),
        ("p", ("a", "ledger", "agent:x", "fly"), "action"),
        ("p", ("a", "ledger", "agent:x", "invoke", "maybe"), "effect"),
        ("g", ("alice", "analyst", "ledger"), "role:<name>"),
        ("g", ("alice", "role:a, b", "ledger"), "no commas"),
    ],
)
def test_policy_rejects_bad_rules(store, ptype, values, match):
    with pytest.raises(InvalidArgument, match=match):
        Policy(store).add(d.PolicyRule(ptype, values))


def test_state_path():
    assert d.state_path("registered", "online") == ["online"]
    assert d.state_path("online", "offline") == ["draining", "offline"]
    assert d.state_path("offline", "offline") == []
    with pytest.raises(InvalidArgument):
        d.state_path("retired", "online")
