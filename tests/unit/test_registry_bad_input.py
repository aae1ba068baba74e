"""Every kind of bad input the registry issue lists, at the store and policy layer, on SQLite and
PostgreSQL: the right domain error, a message naming the field or state, and no row changed.

`dump` reads every registry table (the change log and casbin rules included), so "nothing
half-written" is checked on the database itself, not on what the API reports.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.registry import domain as d
from services.registry.migrate import target_metadata
from services.registry.policy import Policy
from services.registry.store import Store

TD = "harness.local"
TW = d.TrafficWeight


def dump(store: Store) -> dict[str, list[str]]:
    """Every row of every registry table, as sorted reprs (a cheap, exact equality check)."""
    out: dict[str, list[str]] = {}
    with store.engine.connect() as conn:
        for metadata in target_metadata():
            for table in metadata.sorted_tables:
                out[table.name] = sorted(repr(tuple(r)) for r in conn.execute(select(table)))
    return out


def seed(store: Store) -> None:
    store.create_team(d.Team("finance"))
    store.create_project(d.Project("ledger", "finance"))
    store.create_user(d.User("alice", team="finance", roles=("admin",)))
    store.register_model(d.Model("llama-3-8b"))
    store.register_tool(d.Tool("ledger", "1", actions=(d.ToolAction("read", "read"),)))
    store.create_agent(d.Agent("demo-agent", "ledger", type="rag"), TD)
    store.create_agent_version("demo-agent", d.AgentVersion("v1", ("llama-3-8b",), ("ledger",)))
    Policy(store).add(d.PolicyRule("p", ("role:analyst", "ledger", "agent:*", "invoke")))


def _agent(name: str = "x", project: str = "ledger", **kw) -> d.Agent:
    return d.Agent(name, project, **kw)


def _ec_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _version(*models: str, tools: tuple[str, ...] = (), label: str = "v2") -> d.AgentVersion:
    return d.AgentVersion(label, models, tools)


RULE = d.PolicyRule
# (case, call(store, policy), error, substrings the message must contain)
CASES = [
    # Illegal state transitions name the current state.
    ("registered->retired", lambda s, p: s.set_agent_state("demo-agent", "retired"), FailedPrecondition,
     ["is registered", "can go to: online"]),
    ("registered->draining", lambda s, p: s.set_agent_state("demo-agent", "draining"), FailedPrecondition,
     ["is registered"]),
    # Duplicate names.
    ("dup team", lambda s, p: s.create_team(d.Team("finance")), AlreadyExists, ["finance"]),
    ("dup project", lambda s, p: s.create_project(d.Project("ledger", "finance")), AlreadyExists, ["ledger"]),
    ("dup user", lambda s, p: s.create_user(d.User("alice")), AlreadyExists, ["alice"]),
    ("dup agent", lambda s, p: s.create_agent(_agent("demo-agent"), TD), AlreadyExists, ["demo-agent"]),
    ("dup model", lambda s, p: s.register_model(d.Model("llama-3-8b")), AlreadyExists, ["llama-3-8b"]),
    ("dup tool", lambda s, p: s.register_tool(d.Tool("ledger", "1", actions=(d.ToolAction("r", "read"),))),
     AlreadyExists, ["ledger@1"]),
    ("dup version", lambda s, p: s.create_agent_version("demo-agent", _version("llama-3-8b", label="v1")),
     AlreadyExists, ["v1"]),
    # Unknown references.
    ("agent in unknown project", lambda s, p: s.create_agent(_agent(project="nope"), TD), NotFound,
     ["project 'nope'"]),
    ("project in unknown team", lambda s, p: s.create_project(d.Project("p2", "nope")), NotFound, ["team 'nope'"]),
    ("user in unknown team", lambda s, p: s.create_user(d.User("zed", team="nope")), NotFound, ["team 'nope'"]),
    ("key for unknown user", lambda s, p: s.create_api_key("ghost", "ledger"), NotFound, ["user 'ghost'"]),
    ("key in unknown project", lambda s, p: s.create_api_key("alice", "nope"), NotFound, ["project 'nope'"]),
    ("version pins unknown model", lambda s, p: s.create_agent_version("demo-agent", _version("gpt-x")),
     NotFound, ["model 'gpt-x'"]),
    ("version pins unknown tool", lambda s, p: s.create_agent_version(
        "demo-agent", _version("llama-3-8b", tools=("nope",))), NotFound, ["tool 'nope'"]),
    ("version pins unknown tool version", lambda s, p: s.create_agent_version(
        "demo-agent", _version("llama-3-8b", tools=("ledger@9",))), NotFound, ["tool 'ledger@9'"]),
    ("split names unknown version", lambda s, p: s.set_traffic_split("demo-agent", [TW("v9", 100)]), NotFound,
     ["'v9'"]),
    ("unknown agent", lambda s, p: s.set_agent_state("ghost", "online"), NotFound, ["agent 'ghost'"]),
    ("rule in unknown project", lambda s, p: p.add(RULE("p", ("role:a", "nope", "agent:*", "invoke"))),
     NotFound, ["project 'nope'"]),
    ("role in unknown project", lambda s, p: p.add(RULE("g", ("alice", "role:a", "nope"))), NotFound,
     ["project 'nope'"]),
    # Malformed fields, each named.
    ("empty team name", lambda s, p: s.create_team(d.Team("")), InvalidArgument, ["team name"]),
    ("empty project name", lambda s, p: s.create_project(d.Project("", "finance")), InvalidArgument,
     ["project name"]),
    ("empty project team", lambda s, p: s.create_project(d.Project("p2", "")), InvalidArgument, ["team"]),
    ("empty user name", lambda s, p: s.create_user(d.User("")), InvalidArgument, ["user name"]),
    ("empty agent name", lambda s, p: s.create_agent(_agent(""), TD), InvalidArgument, ["agent name"]),
    ("empty agent project", lambda s, p: s.create_agent(_agent(project=""), TD), InvalidArgument,
     ["project is required"]),
    ("empty model name", lambda s, p: s.register_model(d.Model("")), InvalidArgument, ["model name"]),
    ("empty tool name", lambda s, p: s.register_tool(d.Tool("", actions=(d.ToolAction("r", "read"),))),
     InvalidArgument, ["tool name"]),
    ("empty version", lambda s, p: s.create_agent_version("demo-agent", _version("llama-3-8b", label="")),
     InvalidArgument, ["version name"]),
    ("empty key user", lambda s, p: s.create_api_key("", "ledger"), InvalidArgument, ["user is required"]),
    ("malformed spiffe id", lambda s, p: s.create_agent(_agent(spiffe_id="agent/x"), TD), InvalidArgument,
     ["spiffe_id", "not a SPIFFE id"]),
    ("foreign spiffe id", lambda s, p: s.create_agent(_agent(spiffe_id="spiffe://evil/agent/x"), TD),
     InvalidArgument, ["spiffe_id", "spiffe://harness.local/agent/x"]),
    ("weights sum to 90", lambda s, p: s.set_traffic_split("demo-agent", [TW("v1", 90)]), InvalidArgument,
     ["traffic", "sum to 90"]),
    ("weight over 100", lambda s, p: s.set_traffic_split("demo-agent", [TW("v1", 110)]), InvalidArgument,
     ["traffic weight", "110"]),
    ("negative weight", lambda s, p: s.set_traffic_split("demo-agent", [TW("v1", -1)]), InvalidArgument,
     ["traffic weight", "-1"]),
    ("empty split", lambda s, p: s.set_traffic_split("demo-agent", []), InvalidArgument, ["traffic split"]),
    *[
        (f"negative {t}", lambda s, p, t=t: s.create_agent(
            _agent(slo=d.SloTargets("realtime", **{t: -1.0})), TD), InvalidArgument, [f"slo.{t}"])
        for t in ("ttft_ms", "tbt_ms", "e2e_ms")
    ],
    ("negative rpm_limit", lambda s, p: s.create_agent(_agent(rpm_limit=-1), TD), InvalidArgument, ["rpm_limit"]),
    ("negative user rpm_limit", lambda s, p: s.create_user(d.User("zed", rpm_limit=-1)), InvalidArgument,
     ["rpm_limit", "user 'zed'"]),
    ("negative user tpm_limit", lambda s, p: s.create_user(d.User("zed", tpm_limit=-5)), InvalidArgument,
     ["tpm_limit", "-5"]),
    ("set negative rpm_limit", lambda s, p: s.set_user_limits("alice", -1, 0), InvalidArgument, ["rpm_limit"]),
    ("set negative tpm_limit", lambda s, p: s.set_user_limits("alice", 10, -1), InvalidArgument, ["tpm_limit"]),
    ("limits of unknown user", lambda s, p: s.set_user_limits("ghost", 1, 1), NotFound, ["user 'ghost'"]),
    ("limits of empty user", lambda s, p: s.set_user_limits("", 1, 1), InvalidArgument, ["user is required"]),
    ("bad agent type", lambda s, p: s.create_agent(_agent(type="robot"), TD), InvalidArgument, ["agent type"]),
    ("bad slo class", lambda s, p: s.create_agent(_agent(slo=d.SloTargets("asap")), TD), InvalidArgument,
     ["slo_class"]),
    ("negative memory", lambda s, p: s.register_model(d.Model("m", memory_gib=-1)), InvalidArgument,
     ["memory_gib"]),
    ("negative context", lambda s, p: s.register_model(d.Model("m", context_length=-1)), InvalidArgument,
     ["context_length"]),
    ("unknown model kind", lambda s, p: s.register_model(d.Model("m", kind="vision")), InvalidArgument,
     ["kind 'vision'", "generation, embedding"]),
    ("dimensions of a generation model", lambda s, p: s.register_model(d.Model("m", dimensions=8)),
     InvalidArgument, ["dimensions are for embedding models"]),
    ("huge dimensions", lambda s, p: s.register_model(d.Model("m", kind="embedding", dimensions=10**6)),
     InvalidArgument, ["dimensions"]),
    ("negative cache ttl", lambda s, p: s.register_tool(
        d.Tool("t", actions=(d.ToolAction("r", "read", cache_ttl_s=-5),))), InvalidArgument, ["cache_ttl_s"]),
    ("bad risk", lambda s, p: s.register_tool(d.Tool("t", actions=(d.ToolAction("r", "boom"),))),
     InvalidArgument, ["risk"]),
    ("bad tool endpoint", lambda s, p: s.register_tool(
        d.Tool("t", endpoint="ftp://x", actions=(d.ToolAction("r", "read"),))), InvalidArgument, ["endpoint"]),
    ("bad state", lambda s, p: s.set_agent_state("demo-agent", "sleeping"), InvalidArgument, ["agent state"]),
    ("expiry in the past", lambda s, p: s.create_api_key("alice", "ledger", expire_time=d.now() - timedelta(1)),
     InvalidArgument, ["expire_time"]),
    ("bad rule action", lambda s, p: p.add(RULE("p", ("a", "ledger", "agent:x", "fly"))), InvalidArgument,
     ["action"]),
    ("jwt key not PEM", lambda s, p: s.set_jwt_settings(d.JwtSettings("iss", "aud", "nope")), InvalidArgument,
     ["public_key_pem"]),
    ("jwt key not RSA", lambda s, p: s.set_jwt_settings(d.JwtSettings("iss", "aud", _ec_pem())),
     InvalidArgument, ["public_key_pem", "RSA"]),
    ("jwt empty issuer", lambda s, p: s.set_jwt_settings(d.JwtSettings("", "aud", "x")), InvalidArgument,
     ["issuer"]),
    ("jwt empty audience", lambda s, p: s.set_jwt_settings(d.JwtSettings("iss", " ", "x")), InvalidArgument,
     ["audience"]),
]  # fmt: skip


def test_every_bad_input_is_refused_and_changes_nothing(db_url, subtests):
    store = Store(db_url)
    try:
        seed(store)
        policy = Policy(store)
        before = dump(store)
        assert before["changes"] and before["casbin_rule"]  # the check would be vacuous otherwise
        for name, call, error, needles in CASES:
            with subtests.test(case=name):
                with pytest.raises(error) as info:
                    call(store, policy)
                for needle in needles:
                    assert needle in info.value.message
                assert dump(store) == before
        # Policy's in-memory copy is still the database's: the refused rules never took effect.
        assert policy.check("alice", "nope", "agent:demo-agent", "invoke") == (False, "")
    finally:
        store.close()


def test_retired_agent_takes_no_versions(db_url):
    store = Store(db_url)
    try:
        seed(store)
        for state in ("online", "draining", "offline", "retired"):
            store.set_agent_state("demo-agent", state)
        before = dump(store)
        with pytest.raises(FailedPrecondition, match="retired"):
            store.create_agent_version("demo-agent", _version("llama-3-8b"))
        with pytest.raises(FailedPrecondition, match="is retired"):
            store.set_agent_state("demo-agent", "online")
        assert dump(store) == before
    finally:
        store.close()


def test_a_rule_whose_change_record_fails_is_not_kept(db_url, monkeypatch):
    """casbin updates its memory before the database; a failed write must undo both."""
    store = Store(db_url)
    try:
        seed(store)
        policy = Policy(store)
        before = dump(store)
        rule = d.PolicyRule("g", ("bob", "role:analyst", "ledger"))

        def broken(*_args, **_kw):
            raise RuntimeError("disk full")

        monkeypatch.setattr(store, "record", broken)
        with pytest.raises(RuntimeError, match="disk full"):
            policy.add(rule)
        assert dump(store) == before
        assert policy.check("bob", "ledger", "agent:demo-agent", "invoke") == (False, "")
        monkeypatch.undo()
        assert policy.add(rule)  # not "already exists": the failed add left nothing behind
        assert policy.check("bob", "ledger", "agent:demo-agent", "invoke")[0]
    finally:
        store.close()
