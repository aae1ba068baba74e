"""The registry's reads over real gRPC, per caller: an API key, an agent certificate and a user
token read only their own project's agents, policies and keys; admins and Harness services read
everything (docs/security.md, "What each caller may read")."""

from __future__ import annotations

import grpc
import pytest
import yaml
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

# Two tenants: team finance owns project ledger (agent books), team retail owns shop (agent till).
TENANTS = yaml.safe_load(
    """
registry:
  teams: [{name: finance}, {name: retail}]
  projects: [{name: ledger, team: finance}, {name: shop, team: retail}]
  users:
    - {name: alice, team: finance, roles: [admin]}
    - {name: bob, team: finance}
    - {name: carol, team: retail}
    - {name: drifter}
  models: [{name: llama-3-8b, memory_gib: 16}]
  agents:
    - {name: books, project: ledger, versions: [{version: v1, models: [llama-3-8b]}]}
    - name: till
      project: shop
      versions: [{version: v1, models: [llama-3-8b], metadata: {system_prompt: "shop secrets"}}]
  policies:
    - [p, role:clerk, ledger, "agent:books", invoke, allow]
    - [g, bob, role:clerk, ledger]
    - [p, role:cashier, shop, "agent:till", invoke, allow]
    - [g, carol, role:cashier, shop]
    - [p, role:auditor, "*", "agent:*", invoke, allow]
"""
)

DENIED, NOT_FOUND = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND


@pytest.fixture
async def stub(test_auth, db_url):
    store = Store(db_url)
    running = await start_registry(store, test_auth)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            yield RegistryStub(channel)
    finally:
        await running.stop(0)
        store.close()


@pytest.fixture
def admin(mint_token):
    return user_metadata(mint_token("alice", "admin"))


@pytest.fixture
async def keys(stub, admin) -> dict[str, tuple[tuple[str, str], ...]]:
    """Seeds both tenants; API keys of bob in ledger and in shop, of carol in shop."""
    await seed_registry(stub, TENANTS, admin)
    made = {}
    for name, user, project in (("bob@ledger", "bob", "ledger"), ("bob@shop", "bob", "shop")):
        req = pb.CreateApiKeyRequest(user=user, project=project, description=name)
        made[name] = ((API_KEY_KEY, (await stub.CreateApiKey(req, metadata=admin)).secret),)
    return made


async def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details()


async def _agents(stub, md, project: str = "") -> list[str]:
    resp = await stub.ListAgents(pb.ListAgentsRequest(project=project), metadata=md)
    return [a.name for a in resp.agents]


async def _teams(stub, md) -> list[str]:
    return [t.name for t in (await stub.ListTeams(pb.ListTeamsRequest(), metadata=md)).teams]


async def _domains(stub, md) -> set[str]:
    rules = (await stub.ListPolicies(pb.ListPoliciesRequest(), metadata=md)).rules
    return {r.values[1] if r.ptype == "p" else r.values[2] for r in rules}


async def test_a_project_key_reads_its_own_agents_only(stub, keys):
    """Another project's agent is answered as a missing one: the same NOT_FOUND, word for word,
    so a key learns nothing about it (not its project, versions or prompts)."""
    key = keys["bob@ledger"]
    got = await stub.GetAgent(pb.GetAgentRequest(name="books"), metadata=key)
    assert got.agent.project == "ledger"
    code, hidden = await _code(stub.GetAgent(pb.GetAgentRequest(name="till"), metadata=key))
    assert code == NOT_FOUND and "shop" not in hidden and "ledger" in hidden
    _, missing = await _code(stub.GetAgent(pb.GetAgentRequest(name="ghost"), metadata=key))
    assert hidden.replace("'till'", "'ghost'") == missing
    assert await _agents(stub, key) == ["books"]
    assert await _agents(stub, key, "ledger") == ["books"]
    code, msg = await _code(stub.ListAgents(pb.ListAgentsRequest(project="shop"), metadata=key))
    assert code == DENIED and "ListAgentsRequest.project" in msg and "ledger" in msg
    _, unknown = await _code(stub.ListAgents(pb.ListAgentsRequest(project="nowhere"), metadata=key))
    assert msg.replace("'shop'", "'nowhere'") == unknown  # the same answer: existence not confirmed
    assert await _agents(stub, keys["bob@shop"]) == ["till"]  # the same user, the other key


async def test_a_project_key_reads_its_own_policies_only(stub, keys, admin):
    key = keys["bob@ledger"]
    assert await _domains(stub, key) == {"ledger"}  # neither shop's rules nor the '*' rule
    code, msg = await _code(stub.ListPolicies(pb.ListPoliciesRequest(domain="shop"), metadata=key))
    assert code == DENIED and "ListPoliciesRequest.domain" in msg
    code, _ = await _code(stub.ListPolicies(pb.ListPoliciesRequest(domain="*"), metadata=key))
    assert code == DENIED
    ask = pb.CheckAccessRequest(subject="bob", domain="ledger", object="agent:books", action="invoke")
    assert (await stub.CheckAccess(ask, metadata=key)).allowed
    other = pb.CheckAccessRequest(subject="carol", domain="shop", object="agent:till", action="invoke")
    code, msg = await _code(stub.CheckAccess(other, metadata=key))
    assert code == DENIED and "CheckAccessRequest.domain" in msg
    assert await _domains(stub, admin) == {"ledger", "shop", "*"}
    assert (await stub.CheckAccess(other, metadata=admin)).allowed


async def test_a_project_key_lists_its_own_project_keys_only(stub, keys, admin, mint_token):
    """bob holds keys in ledger and shop: each key lists the one of its project, bob's token those
    of his team's project (ledger), an admin both."""

    async def listed(md) -> list[str]:
        return sorted(k.project for k in (await stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=md)).keys)

    assert await listed(keys["bob@ledger"]) == ["ledger"]
    assert await listed(keys["bob@shop"]) == ["shop"]
    assert await listed(user_metadata(mint_token("bob"))) == ["ledger"]
    assert await listed(admin) == ["ledger", "shop"]


async def test_an_agent_certificate_reads_its_own_project_only(stub, keys):
    books = agent_metadata("books")
    assert await _agents(stub, books) == ["books"]
    code, _ = await _code(stub.GetAgent(pb.GetAgentRequest(name="till"), metadata=books))
    assert code == NOT_FOUND
    assert await _domains(stub, books) == {"ledger"}
    projects = (await stub.ListProjects(pb.ListProjectsRequest(), metadata=books)).projects
    assert [p.name for p in projects] == ["ledger"]
    assert await _teams(stub, books) == ["finance"]
    # Every credential narrows: the agent of ledger with a key of shop acts in no project.
    both = (*agent_metadata("books"), *keys["bob@shop"])
    assert await _agents(stub, both) == []
    code, msg = await _code(stub.GetAgent(pb.GetAgentRequest(name="books"), metadata=both))
    assert code == NOT_FOUND and "API key of project 'shop' and agent 'books' of project 'ledger'" in msg
    # An agent the registry does not know acts in no project.
    assert await _agents(stub, agent_metadata("stray")) == []


async def test_a_user_token_reads_the_projects_of_the_users_team(stub, keys, mint_token):
    carol = user_metadata(mint_token("carol"))
    assert await _agents(stub, carol) == ["till"]
    assert await _domains(stub, carol) == {"shop"}
    projects = (await stub.ListProjects(pb.ListProjectsRequest(team="finance"), metadata=carol)).projects
    assert list(projects) == []
    assert await _teams(stub, carol) == ["retail"]
    # No team (or no registry record) is no project; catalogs stay shared.
    for nobody in (user_metadata(mint_token("drifter")), user_metadata(mint_token("unregistered"))):
        assert await _agents(stub, nobody) == []
        code, msg = await _code(stub.GetAgent(pb.GetAgentRequest(name="till"), metadata=nobody))
        assert code == NOT_FOUND and "none:" in msg
        models = (await stub.ListModels(pb.ListModelsRequest(), metadata=nobody)).models
        assert [m.name for m in models] == ["llama-3-8b"]


async def test_a_service_certificate_reads_every_project_an_agent_certificate_does_not(test_auth, tmp_path):
    """Routers, pool, cost and the ops CLI read with service certificates: every project. An
    agent's own certificate on the same mTLS port reads its project only."""
    certs = make_certs(tmp_path / "certs", services=("registry", "cost"), agents=("books",))

    def tls(pair) -> TlsFiles:
        return TlsFiles(str(pair.cert), str(pair.key), str(certs.ca_cert))

    store = Store(f"sqlite:///{tmp_path / 'registry.db'}")
    running = await start_registry(store, test_auth, tls(certs.services["registry"]))
    address = f"127.0.0.1:{running.port}"
    try:
        async with open_channel(address, tls(certs.services["cost"])) as channel:
            service = RegistryStub(channel)
            await seed_registry(service, TENANTS, ())
            assert await _agents(service, ()) == ["books", "till"]
            assert (await service.GetAgent(pb.GetAgentRequest(name="till"))).agent.project == "shop"
            assert await _domains(service, ()) == {"ledger", "shop", "*"}
        async with open_channel(address, tls(certs.agents["books"])) as channel:
            agent = RegistryStub(channel)
            assert await _agents(agent, ()) == ["books"]
            code, _ = await _code(agent.GetAgent(pb.GetAgentRequest(name="till")))
            assert code == NOT_FOUND
    finally:
        await running.stop(0)
        store.close()
