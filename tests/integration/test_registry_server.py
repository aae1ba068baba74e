"""The registry over real gRPC: access rules, API keys, lifecycle, policy, seeding (bad input: test_registry_errors)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
import yaml
from google.protobuf.timestamp_pb2 import Timestamp
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2 as pb
from harness.registry.v1.registry_pb2_grpc import RegistryStub

from services.common.config import TlsFiles
from services.common.identity import API_KEY_KEY
from services.common.server import open_channel
from services.devtools.certs import make_certs
from services.registry.seed import seed_registry
from services.registry.store import Store
from tests.helpers.grpc import agent_metadata, user_metadata
from tests.helpers.registry_server import start_registry

# The lead's demo YAML, verbatim in shape (enums in lowercase short form).
DEMO = yaml.safe_load(
    """
registry:
  teams: [{name: finance, display_name: Finance}]
  projects: [{name: ledger, team: finance}]
  users:
    - {name: alice, email: alice@example.com, team: finance, roles: [admin]}
    - {name: bob, team: finance}
    - {name: mallory, team: finance}
  models:
    - {name: llama-3-8b, triton_model: llama-3-8b-instruct, family: llama-3, parameters_b: 8,
       quantization: fp16, memory_gib: 16, context_length: 8192}
    - {name: minilm, kind: embedding, dimensions: 384, memory_gib: 1, context_length: 512}
  tools:
    - name: ledger
      version: "1"
      endpoint: "http://127.0.0.1:0/ledger"
      actions:
        - {name: read, risk: read, idempotent: true, cache_ttl_s: 30}
        - {name: delete, risk: delete, requires_approval: true}
  agents:
    - name: demo-agent
      type: rag
      project: ledger
      slo: {slo_class: interactive, ttft_ms: 500, tbt_ms: 50, e2e_ms: 10000}
      versions: [{version: v1, models: [llama-3-8b], tools: [ledger]}]
      state: online
  policies:
    - [p, role:analyst, ledger, "agent:demo-agent", invoke, allow]
    - [p, agent:demo-agent, ledger, "model:llama-3-8b", invoke, allow]
    - [g, alice, role:analyst, ledger]
    - [g, bob, role:analyst, ledger]
"""
)

INVALID, NOT_FOUND, EXISTS = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
)
PRECOND, UNAUTH = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture
async def server(test_auth, db_url):
    """A registry on port 0 over SQLite and, in a second run, PostgreSQL."""
    store = Store(db_url)
    running = await start_registry(store, test_auth)
    yield running
    await running.stop(0)
    store.close()


@pytest.fixture
async def stub(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield RegistryStub(channel)


@pytest.fixture
def admin(mint_token):
    return user_metadata(mint_token("alice", "admin"))


@pytest.fixture
def bob(mint_token):
    return user_metadata(mint_token("bob"))


@pytest.fixture
async def demo(stub, admin):
    await seed_registry(stub, DEMO, admin)
    return stub


async def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details()


async def test_seed_creates_everything_and_is_idempotent(stub, admin):
    first = await seed_registry(stub, DEMO, admin)
    assert first.created > 0 and first.existing == 0
    again = await seed_registry(stub, DEMO["registry"], admin)  # the bare section works too
    assert again.created == 0 and again.existing == first.created - 1  # state move is not counted
    agent = (await stub.GetAgent(pb.GetAgentRequest(name="demo-agent"), metadata=admin)).agent
    assert agent.state == common_pb2.AGENT_STATE_ONLINE
    assert agent.type == common_pb2.AGENT_TYPE_RAG
    assert agent.slo.slo_class == common_pb2.SLO_CLASS_INTERACTIVE and agent.slo.ttft_ms == 500
    assert agent.spiffe_id == "spiffe://harness.local/agent/demo-agent"
    assert [(w.version, w.weight) for w in agent.traffic] == [("v1", 100)]
    tools = (await stub.ListTools(pb.ListToolsRequest(), metadata=admin)).tools
    risks = {a.name: (a.risk, a.requires_approval) for a in tools[0].actions}
    assert risks == {
        "read": (common_pb2.RISK_CLASS_READ, False),
        "delete": (common_pb2.RISK_CLASS_DELETE, True),
    }
    rules = (await stub.ListPolicies(pb.ListPoliciesRequest(domain="ledger"), metadata=admin)).rules
    assert len(rules) == 4
    with pytest.raises(ValueError, match="agentz"):
        await seed_registry(stub, {"registry": {"agentz": []}}, admin)


async def test_seed_over_mtls_as_a_service(test_auth, tmp_path):
    """The stack seeds with a service certificate, no admin JWT."""
    certs = make_certs(tmp_path / "certs", services=("registry", "router"), agents=())
    store = Store(f"sqlite:///{tmp_path / 'registry.db'}")
    server_tls = TlsFiles(
        str(certs.services["registry"].cert), str(certs.services["registry"].key), str(certs.ca_cert)
    )
    running = await start_registry(store, test_auth, server_tls)
    client_tls = TlsFiles(
        str(certs.services["router"].cert), str(certs.services["router"].key), str(certs.ca_cert)
    )
    try:
        async with open_channel(f"127.0.0.1:{running.port}", client_tls) as channel:
            report = await seed_registry(RegistryStub(channel), DEMO, ())
            assert report.created > 0
    finally:
        await running.stop(0)
        store.close()


async def test_reads_need_a_caller_and_writes_need_admin(demo, bob, mint_token):
    stub = demo
    team = pb.CreateTeamRequest(team=pb.Team(name="ops"))
    code, msg = await _code(stub.CreateTeam(team, metadata=bob))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "admin" in msg and "'bob'" in msg
    code, msg = await _code(stub.CreateTeam(team, metadata=agent_metadata("demo-agent")))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "demo-agent" in msg
    code, msg = await _code(stub.CreateTeam(team))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in msg
    code, _ = await _code(stub.ListTeams(pb.ListTeamsRequest()))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = await _code(stub.ListTeams(pb.ListTeamsRequest(), metadata=user_metadata("not-a-jwt")))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # Any authenticated caller may read: a plain user, or an agent (XFCC via Envoy).
    assert [t.name for t in (await stub.ListTeams(pb.ListTeamsRequest(), metadata=bob)).teams] == ["finance"]
    got = await stub.GetAgent(pb.GetAgentRequest(name="demo-agent"), metadata=agent_metadata("demo-agent"))
    assert got.agent.project == "ledger"
    code, _ = await _code(
        stub.AuthenticateApiKey(pb.AuthenticateApiKeyRequest(secret="hk_x_y"), metadata=bob)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_lists_filter_and_page(demo, admin):
    stub = demo
    for name in ("a-team", "b-team", "c-team"):
        await stub.CreateTeam(pb.CreateTeamRequest(team=pb.Team(name=name)), metadata=admin)
    names, token = [], ""
    while True:
        req = pb.ListTeamsRequest(page=common_pb2.PageRequest(page_size=2, page_token=token))
        resp = await stub.ListTeams(req, metadata=admin)
        names += [t.name for t in resp.teams]
        token = resp.page.next_page_token
        if not token:
            break
    assert names == ["a-team", "b-team", "c-team", "finance"]
    users = (await stub.ListUsers(pb.ListUsersRequest(team="finance"), metadata=admin)).users
    assert [u.name for u in users] == ["alice", "bob", "mallory"]
    assert (await stub.GetUser(pb.GetUserRequest(name="alice"), metadata=admin)).user.roles == ["admin"]
    online = pb.ListAgentsRequest(project="ledger", state=common_pb2.AGENT_STATE_ONLINE)
    assert len((await stub.ListAgents(online, metadata=admin)).agents) == 1
    offline = pb.ListAgentsRequest(state=common_pb2.AGENT_STATE_OFFLINE)
    assert len((await stub.ListAgents(offline, metadata=admin)).agents) == 0
    rag = pb.ListAgentsRequest(type=common_pb2.AGENT_TYPE_CODE)
    assert len((await stub.ListAgents(rag, metadata=admin)).agents) == 0
    projects = (await stub.ListProjects(pb.ListProjectsRequest(team="finance"), metadata=admin)).projects
    assert [p.name for p in projects] == ["ledger"]
    models = (await stub.ListModels(pb.ListModelsRequest(), metadata=admin)).models
    assert models[0].triton_model == "llama-3-8b-instruct" and models[0].context_length == 8192
    assert models[0].kind == pb.MODEL_KIND_GENERATION
    assert (models[1].name, models[1].kind, models[1].dimensions) == ("minilm", pb.MODEL_KIND_EMBEDDING, 384)


async def test_lifecycle_and_traffic_over_rpc(demo, admin):
    stub = demo
    version = pb.AgentVersion(version="v2", models=["llama-3-8b"], tools=["ledger@1"])
    version.metadata.update({"git_sha": "abc123"})
    resp = await stub.CreateAgentVersion(
        pb.CreateAgentVersionRequest(agent="demo-agent", version=version), metadata=admin
    )
    assert [v.version for v in resp.agent.versions] == ["v1", "v2"]
    assert resp.agent.versions[1].metadata["git_sha"] == "abc123"
    split = [pb.TrafficWeight(version="v1", weight=90), pb.TrafficWeight(version="v2", weight=10)]
    resp = await stub.SetTrafficSplit(
        pb.SetTrafficSplitRequest(agent="demo-agent", traffic=split), metadata=admin
    )
    assert list(resp.agent.traffic) == split
    before = resp.agent.revision
    resp = await stub.RollbackTrafficSplit(pb.RollbackTrafficSplitRequest(agent="demo-agent"), metadata=admin)
    assert [(w.version, w.weight) for w in resp.agent.traffic] == [("v1", 100)]
    assert resp.agent.revision > before
    for state in (
        common_pb2.AGENT_STATE_DRAINING,
        common_pb2.AGENT_STATE_OFFLINE,
        common_pb2.AGENT_STATE_RETIRED,
    ):
        resp = await stub.SetAgentState(
            pb.SetAgentStateRequest(agent="demo-agent", state=state), metadata=admin
        )
        assert resp.agent.state == state
    req = pb.SetAgentStateRequest(agent="demo-agent", state=common_pb2.AGENT_STATE_ONLINE)
    code, msg = await _code(stub.SetAgentState(req, metadata=admin))
    assert code == PRECOND and "retired is final" in msg


async def test_api_key_lifecycle(demo, admin, bob):
    stub = demo
    expire = Timestamp()
    expire.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    req = pb.CreateApiKeyRequest(user="bob", project="ledger", description="ci", expire_time=expire)
    created = await stub.CreateApiKey(req, metadata=admin)
    secret, key = created.secret, created.key
    assert (
        secret.startswith(f"hk_{key.id}_") and key.HasField("expire_time") and not key.HasField("revoke_time")
    )
    listed = (await stub.ListApiKeys(pb.ListApiKeysRequest(user="bob"), metadata=bob)).keys
    assert [k.id for k in listed] == [key.id] and secret not in str(listed)
    assert [k.id for k in (await stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=bob)).keys] == [key.id]
    code, _ = await _code(stub.ListApiKeys(pb.ListApiKeysRequest(user="alice"), metadata=bob))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    auth = await stub.AuthenticateApiKey(pb.AuthenticateApiKeyRequest(secret=secret), metadata=admin)
    assert auth.user.name == "bob" and auth.key.project == "ledger"
    # The key works as a credential on the registry itself: reads yes, admin no.
    as_key = ((API_KEY_KEY, secret),)
    assert (await stub.GetUser(pb.GetUserRequest(name="bob"), metadata=as_key)).user.name == "bob"
    code, _ = await _code(stub.CreateTeam(pb.CreateTeamRequest(team=pb.Team(name="x")), metadata=as_key))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    revoked = await stub.RevokeApiKey(pb.RevokeApiKeyRequest(id=key.id), metadata=admin)
    assert revoked.key.HasField("revoke_time")
    code, msg = await _code(
        stub.AuthenticateApiKey(pb.AuthenticateApiKeyRequest(secret=secret), metadata=admin)
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in msg
    code, _ = await _code(stub.GetUser(pb.GetUserRequest(name="bob"), metadata=as_key))
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_a_user_reads_their_own_record_and_no_one_elses(demo, admin, bob):
    """Emails, roles and limits are a user's own: another caller (a user, an API key, an agent
    certificate) gets PERMISSION_DENIED for anyone else's record and for the list of users."""
    stub = demo
    own = (await stub.GetUser(pb.GetUserRequest(name="bob"), metadata=bob)).user
    assert own.name == "bob"
    for who in (bob, agent_metadata("demo-agent")):
        code, msg = await _code(stub.GetUser(pb.GetUserRequest(name="alice"), metadata=who))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "only admins" in msg and "alice@" not in msg
        code, msg = await _code(stub.ListUsers(pb.ListUsersRequest(), metadata=who))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "admin role" in msg
    assert (
        await stub.GetUser(pb.GetUserRequest(name="alice"), metadata=admin)
    ).user.email == "alice@example.com"


async def test_check_access_names_the_rule(demo, admin, bob):
    stub = demo
    deny = pb.PolicyRule(ptype="p", values=["mallory", "ledger", "agent:*", "invoke", "deny"])
    assert (await stub.AddPolicy(pb.AddPolicyRequest(rule=deny), metadata=admin)).added
    assert not (await stub.AddPolicy(pb.AddPolicyRequest(rule=deny), metadata=admin)).added

    async def check(sub, obj="agent:demo-agent"):
        req = pb.CheckAccessRequest(subject=sub, domain="ledger", object=obj, action="invoke")
        resp = await stub.CheckAccess(req, metadata=bob)
        return resp.allowed, resp.rule

    assert await check("bob") == (True, "p, role:analyst, ledger, agent:demo-agent, invoke, allow")
    assert await check("agent:demo-agent", "model:llama-3-8b") == (
        True,
        "p, agent:demo-agent, ledger, model:llama-3-8b, invoke, allow",
    )
    assert await check("mallory") == (False, "p, user:mallory, ledger, agent:*, invoke, deny")
    assert await check("user:mallory") == (False, "p, user:mallory, ledger, agent:*, invoke, deny")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await check("team:finance")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown kind" in err.value.details()
    assert await check("eve") == (False, "")
    g_bob = pb.PolicyRule(ptype="g", values=["bob", "role:analyst", "ledger"])
    assert (await stub.RemovePolicy(pb.RemovePolicyRequest(rule=g_bob), metadata=admin)).removed
    assert not (await stub.RemovePolicy(pb.RemovePolicyRequest(rule=g_bob), metadata=admin)).removed
    assert await check("bob") == (False, "")
