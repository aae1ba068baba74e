"""Every bad input over real gRPC (SQLite and PostgreSQL): the status code, a message naming the
field or state, and not one row changed; and every mutating RPC refused to a non-admin."""

from __future__ import annotations

import copy

import grpc
import pytest
from google.protobuf.descriptor_pb2 import MethodOptions
from google.protobuf.timestamp_pb2 import Timestamp
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2 as pb
from harness.registry.v1.registry_pb2_grpc import RegistryStub

from services.registry.seed import seed_registry
from services.registry.store import Store
from tests.helpers.registry_server import start_registry
from tests.integration.test_registry_server import DEMO
from tests.unit.test_registry_bad_input import dump

INVALID, NOT_FOUND, EXISTS = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
)
PRECOND, UNAUTH = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture
async def registry(test_auth, db_url, mint_token):
    """(stub, store, admin metadata, bob metadata) over a seeded registry on port 0."""
    store = Store(db_url)
    running = await start_registry(store, test_auth)
    admin = (("authorization", f"Bearer {mint_token('alice', 'admin')}"),)
    bob = (("authorization", f"Bearer {mint_token('bob')}"),)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = RegistryStub(channel)
            await seed_registry(stub, DEMO, admin)
            yield stub, store, admin, bob
    finally:
        await running.stop(0)
        store.close()


async def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details()


def _agent(**kw) -> pb.CreateAgentRequest:
    return pb.CreateAgentRequest(agent=pb.Agent(**{"project": "ledger", **kw}))


def _version(agent: str = "demo-agent", **kw) -> pb.CreateAgentVersionRequest:
    return pb.CreateAgentVersionRequest(agent=agent, version=pb.AgentVersion(version="v2", **kw))


def _split(*pairs) -> pb.SetTrafficSplitRequest:
    weights = [pb.TrafficWeight(version=v, weight=w) for v, w in pairs]
    return pb.SetTrafficSplitRequest(agent="demo-agent", traffic=weights)


def _jwt(**kw) -> pb.SetJwtSettingsRequest:
    settings = {"issuer": "harness", "audience": "harness", "public_key_pem": "", **kw}
    return pb.SetJwtSettingsRequest(settings=pb.JwtSettings(**settings))


def _rule(ptype: str, *values: str) -> pb.PolicyRule:
    return pb.PolicyRule(ptype=ptype, values=values)


ONLINE, RETIRED = common_pb2.AGENT_STATE_ONLINE, common_pb2.AGENT_STATE_RETIRED
PAST = Timestamp(seconds=1)
BAD_CALLS = [
    ("CreateProject", pb.CreateProjectRequest(project=pb.Project(name="p")), INVALID, "team is required"),
    ("CreateAgent", _agent(name="x", spiffe_id="x.example"), INVALID, "not a SPIFFE id"),
    ("CreateAgent", _agent(name="x", slo=pb.SloTargets(tbt_ms=-1)), INVALID, "slo.tbt_ms"),
    ("CreateAgent", _agent(name="x", slo=pb.SloTargets(e2e_ms=-5)), INVALID, "slo.e2e_ms"),
    ("CreateAgent", _agent(name=""), INVALID, "agent name is required"),
    ("CreateAgentVersion", _version(models=["llama-3-8b"], tools=["ledger@9"]), NOT_FOUND, "tool 'ledger@9'"),
    ("SetTrafficSplit", _split(("v1", 101)), INVALID, "traffic weight"),
    ("AddPolicy", pb.AddPolicyRequest(rule=_rule("p", "a", "nope", "agent:*", "invoke")), NOT_FOUND, "nope"),
    ("AddPolicy", pb.AddPolicyRequest(rule=_rule("g", "bob", "role:x", "nope")), NOT_FOUND, "project 'nope'"),
    ("SetJwtSettings", _jwt(public_key_pem="-----BEGIN PUBLIC KEY-----"), INVALID, "public_key_pem"),
    ("SetJwtSettings", _jwt(issuer=""), INVALID, "issuer"),
    (
        "SetJwtSettings",
        _jwt(jwks_url="https://x/j", oidc_discovery_url="https://x/d"),
        INVALID,
        "exactly one of",
    ),
    ("SetJwtSettings", _jwt(jwks_url="http://idp.example/jwks"), INVALID, "https://"),
    ("SetJwtSettings", _jwt(oidc_discovery_url="ftp://x/y"), INVALID, "oidc_discovery_url"),
    ("SetJwtSettings", _jwt(jwks_url="https://x/" + "j" * 3000), INVALID, "2048"),
    ("SetJwtSettings", _jwt(), INVALID, "exactly one"),
    ("GetJwtSettings", pb.GetJwtSettingsRequest(), NOT_FOUND, "harness up"),
    ("CreateTeam", pb.CreateTeamRequest(team=pb.Team(name="Finance!")), INVALID, "lowercase"),
    ("CreateTeam", pb.CreateTeamRequest(team=pb.Team(name="finance")), EXISTS, "finance"),
    ("CreateProject", pb.CreateProjectRequest(project=pb.Project(name="p", team="nope")), NOT_FOUND, "nope"),
    ("CreateUser", pb.CreateUserRequest(user=pb.User(name="")), INVALID, "required"),
    ("CreateUser", pb.CreateUserRequest(user=pb.User(name="zed", team="nope")), NOT_FOUND, "nope"),
    ("GetUser", pb.GetUserRequest(name="ghost"), NOT_FOUND, "ghost"),
    ("CreateUser", pb.CreateUserRequest(user=pb.User(name="zed", rpm_limit=-1)), INVALID, "rpm_limit"),
    ("SetUserLimits", pb.SetUserLimitsRequest(user="ghost", rpm_limit=1), NOT_FOUND, "ghost"),
    ("SetUserLimits", pb.SetUserLimitsRequest(user="bob", rpm_limit=-1), INVALID, "rpm_limit"),
    ("SetUserLimits", pb.SetUserLimitsRequest(user="bob", tpm_limit=-1), INVALID, "tpm_limit"),
    ("SetUserLimits", pb.SetUserLimitsRequest(), INVALID, "user is required"),
    ("CreateApiKey", pb.CreateApiKeyRequest(user="ghost", project="ledger"), NOT_FOUND, "ghost"),
    ("CreateApiKey", pb.CreateApiKeyRequest(user="bob", project="nope"), NOT_FOUND, "nope"),
    ("CreateApiKey", pb.CreateApiKeyRequest(user="bob", project="ledger", expire_time=PAST), INVALID, "past"),
    ("RevokeApiKey", pb.RevokeApiKeyRequest(id="nope"), NOT_FOUND, "nope"),
    ("AuthenticateApiKey", pb.AuthenticateApiKeyRequest(secret="hk_abc_def"), UNAUTH, "not valid"),
    ("CreateAgent", _agent(name="Bad Agent"), INVALID, "agent name"),
    ("CreateAgent", _agent(name="x", project="nope"), NOT_FOUND, "project 'nope'"),
    ("CreateAgent", _agent(name="demo-agent"), EXISTS, "demo-agent"),
    ("CreateAgent", _agent(name="x", spiffe_id="spiffe://evil/agent/x"), INVALID, "harness.local/agent/x"),
    ("CreateAgent", _agent(name="x", type=99), INVALID, "99"),
    ("GetAgent", pb.GetAgentRequest(name="ghost"), NOT_FOUND, "agent 'ghost'"),
    ("CreateAgentVersion", _version(models=["gpt-x"]), NOT_FOUND, "model 'gpt-x'"),
    ("CreateAgentVersion", _version(models=["llama-3-8b"], tools=["nope"]), NOT_FOUND, "tool 'nope'"),
    ("CreateAgentVersion", _version(), INVALID, "model"),
    ("CreateAgentVersion", _version("ghost", models=["llama-3-8b"]), NOT_FOUND, "ghost"),
    ("SetAgentState", pb.SetAgentStateRequest(agent="demo-agent", state=RETIRED), PRECOND, "is online"),
    ("SetAgentState", pb.SetAgentStateRequest(agent="demo-agent"), INVALID, "agent state"),
    ("SetAgentState", pb.SetAgentStateRequest(agent="ghost", state=ONLINE), NOT_FOUND, "ghost"),
    ("SetTrafficSplit", _split(("v1", 50)), INVALID, "sum to 50"),
    ("SetTrafficSplit", _split(("v9", 100)), NOT_FOUND, "v9"),
    ("SetTrafficSplit", _split(), INVALID, "empty"),
    ("RollbackTrafficSplit", pb.RollbackTrafficSplitRequest(agent="demo-agent"), PRECOND, "roll back"),
    ("RegisterModel", pb.RegisterModelRequest(model=pb.Model(name="llama-3-8b")), EXISTS, "llama-3-8b"),
    (
        "RegisterModel",
        pb.RegisterModelRequest(model=pb.Model(name="m", memory_gib=-1)),
        INVALID,
        "memory_gib",
    ),
    ("RegisterTool", pb.RegisterToolRequest(tool=pb.Tool(name="t")), INVALID, "action"),
    (
        "RegisterTool",
        pb.RegisterToolRequest(
            tool=pb.Tool(name="t", endpoint="ftp://x", actions=[{"name": "a", "risk": 1}])
        ),
        INVALID,
        "or mcp+http:// or mcp+https:// (an MCP server)",
    ),
    (
        "RegisterTool",
        pb.RegisterToolRequest(tool=pb.Tool(name="t", actions=[{"name": "a"}])),
        INVALID,
        "risk",
    ),
    ("AddPolicy", pb.AddPolicyRequest(rule=_rule("q", "a")), INVALID, "'p'"),
    (
        "AddPolicy",
        pb.AddPolicyRequest(rule=_rule("p", "a", "ledger", "db:x", "invoke")),
        INVALID,
        "agent:<name>",
    ),
    ("RemovePolicy", pb.RemovePolicyRequest(rule=_rule("g", "a", "b")), INVALID, "3 values"),
    (
        "CheckAccess",
        pb.CheckAccessRequest(subject="bob", domain="ledger", object="agent:x"),
        INVALID,
        "action",
    ),
    ("ListTeams", pb.ListTeamsRequest(page=common_pb2.PageRequest(page_token="abc")), INVALID, "page_token"),
    ("ListUsers", pb.ListUsersRequest(page=common_pb2.PageRequest(page_size=-1)), INVALID, "page_size"),
]


async def test_bad_input_status_and_nothing_written(registry, subtests):
    stub, store, admin, _ = registry
    before = dump(store)
    for i, (rpc, request, code, needle) in enumerate(BAD_CALLS):
        with subtests.test(case=f"{rpc}-{i}"):
            got, msg = await _code(getattr(stub, rpc)(copy.deepcopy(request), metadata=admin))
            assert got == code, msg
            assert needle in msg
            assert dump(store) == before


def _mutating() -> set[str]:
    """RPCs not marked NO_SIDE_EFFECTS in the proto (Watch streams, so it is not one)."""
    return {
        m.name
        for m in pb.DESCRIPTOR.services_by_name["Registry"].methods
        if m.GetOptions().idempotency_level != MethodOptions.NO_SIDE_EFFECTS and not m.server_streaming
    }


# A request each mutating RPC would accept from an admin, so a refusal is about the caller.
VALID = {
    "CreateTeam": pb.CreateTeamRequest(team=pb.Team(name="ops")),
    "CreateProject": pb.CreateProjectRequest(project=pb.Project(name="p2", team="finance")),
    "CreateUser": pb.CreateUserRequest(user=pb.User(name="zed")),
    "SetUserLimits": pb.SetUserLimitsRequest(user="bob", rpm_limit=5, tpm_limit=500),
    "CreateApiKey": pb.CreateApiKeyRequest(user="bob", project="ledger"),
    "RevokeApiKey": pb.RevokeApiKeyRequest(id="0000000000000000"),
    "CreateAgent": _agent(name="x"),
    "CreateAgentVersion": _version(models=["llama-3-8b"]),
    "SetAgentState": pb.SetAgentStateRequest(agent="demo-agent", state=common_pb2.AGENT_STATE_DRAINING),
    "SetTrafficSplit": _split(("v1", 100)),
    "RollbackTrafficSplit": pb.RollbackTrafficSplitRequest(agent="demo-agent"),
    "RegisterModel": pb.RegisterModelRequest(model=pb.Model(name="m2")),
    "RegisterTool": pb.RegisterToolRequest(
        tool=pb.Tool(name="t2", actions=[pb.ToolAction(name="r", risk=common_pb2.RISK_CLASS_READ)])
    ),
    "AddPolicy": pb.AddPolicyRequest(rule=_rule("g", "bob", "role:admin", "ledger")),
    "RemovePolicy": pb.RemovePolicyRequest(rule=_rule("g", "bob", "role:analyst", "ledger")),
    "SetJwtSettings": _jwt(public_key_pem="x"),
    "DeleteTeam": pb.DeleteTeamRequest(name="finance"),
    "DeleteProject": pb.DeleteProjectRequest(name="ledger"),
    "DeleteUser": pb.DeleteUserRequest(name="mallory"),
    "DeleteAgent": pb.DeleteAgentRequest(name="demo-agent"),
    "DeleteAgentVersion": pb.DeleteAgentVersionRequest(agent="demo-agent", version="v1"),
    "DeleteModel": pb.DeleteModelRequest(name="llama-3-8b"),
    "DeleteTool": pb.DeleteToolRequest(name="ledger", version="1"),
    "SetSecret": pb.SetSecretRequest(name="books-token", value="v"),
    "SetAgentApiKeyAuth": pb.SetAgentApiKeyAuthRequest(agent="demo-agent", enabled=True),
    "DeleteSecret": pb.DeleteSecretRequest(name="books-token"),
}


async def test_every_mutating_rpc_needs_admin(registry, subtests):
    stub, store, _, bob = registry
    assert set(VALID) == _mutating()  # a new mutating RPC must be added here
    before = dump(store)
    for rpc, request in VALID.items():
        with subtests.test(rpc=rpc):
            code, msg = await _code(getattr(stub, rpc)(request, metadata=bob))
            assert code == DENIED and "admin" in msg and "'bob'" in msg, msg
            assert dump(store) == before
    code, _ = await _code(anext(aiter(stub.Watch(pb.WatchRequest(), metadata=bob))))
    assert code == DENIED  # Watch streams everything: admins and services only
