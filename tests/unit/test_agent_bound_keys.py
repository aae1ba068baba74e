"""API keys bound to an agent: issued only for an agent that allows them (audited switch, off by
default), resolved with their agent, refused once the agent stops accepting them; and the
authenticator lets a bound key name the agent only when no certificate does, never another one."""

from __future__ import annotations

import pytest
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2 as pb

from services.common import context as reqctx
from services.common.context import AGENT_BY_KEY, BOUND_AGENT, Identity
from services.common.errors import FailedPrecondition, InvalidArgument, Unauthenticated
from services.common.identity import XFCC_KEY, AuthConfig, Authenticator
from services.registry import domain as d
from services.registry.policy import Policy
from services.registry.servicer import RegistryServicer
from services.registry.store import Store


@pytest.fixture
def servicer(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'registry.db'}")
    reqctx.set_current(reqctx.new_context(Identity(user="alice", roles=("admin",))))
    store.create_team(d.Team("finance"))
    yield RegistryServicer(store, Policy(store))
    store.close()


async def _seed(s: RegistryServicer) -> None:
    await s.CreateProject(pb.CreateProjectRequest(project=pb.Project(name="ledger", team="finance")), None)
    await s.CreateProject(pb.CreateProjectRequest(project=pb.Project(name="other", team="finance")), None)
    await s.CreateUser(pb.CreateUserRequest(user=pb.User(name="bob", team="finance")), None)
    agent = pb.Agent(name="bot", project="ledger", type=common_pb2.AGENT_TYPE_RAG)
    await s.CreateAgent(pb.CreateAgentRequest(agent=agent), None)


async def test_a_bound_key_needs_the_agents_switch_and_stops_when_it_is_turned_off(servicer):
    await _seed(servicer)
    with pytest.raises(FailedPrecondition, match="harness agents api-key-auth bot on"):
        await servicer.CreateApiKey(pb.CreateApiKeyRequest(user="bob", project="ledger", agent="bot"), None)
    revision = servicer.store.last_revision()
    turned = await servicer.SetAgentApiKeyAuth(pb.SetAgentApiKeyAuthRequest(agent="bot", enabled=True), None)
    assert turned.agent.api_key_auth
    [change] = servicer.store.change_records(revision, 10)  # the switch is an audited change
    assert (change.kind, change.key, change.actor_user) == ("agent", "bot", "alice")
    with pytest.raises(InvalidArgument, match="belongs to project 'ledger'"):
        await servicer.CreateApiKey(pb.CreateApiKeyRequest(user="bob", project="other", agent="bot"), None)
    created = await servicer.CreateApiKey(
        pb.CreateApiKeyRequest(user="bob", project="ledger", agent="bot"), None
    )
    assert created.key.agent == "bot"
    got = await servicer.AuthenticateApiKey(pb.AuthenticateApiKeyRequest(secret=created.secret), None)
    assert (got.key.agent, got.user.name) == ("bot", "bob")
    assert (await servicer.resolve_api_key(created.secret)).claims[BOUND_AGENT] == "bot"
    assert created.secret not in str(servicer.store.change_records(0, 100))  # stored hashed
    await servicer.SetAgentApiKeyAuth(pb.SetAgentApiKeyAuthRequest(agent="bot", enabled=False), None)
    with pytest.raises(Unauthenticated, match="bound to agent 'bot', which does not accept API keys"):
        await servicer.AuthenticateApiKey(pb.AuthenticateApiKeyRequest(secret=created.secret), None)


def _authenticator(claims: dict) -> Authenticator:
    async def resolve(secret: str) -> Identity:
        if secret != "hk_1_secret":
            raise Unauthenticated("API key is not valid")
        return Identity(user="bob", auth_method="api_key", project="ledger", claims=claims)

    return Authenticator(AuthConfig(trust_xfcc_without_tls=True), None, resolve)


def _headers(agent: str = "") -> dict[str, str]:
    md = {"authorization": "Bearer hk_1_secret"}
    if agent:
        md[XFCC_KEY] = f"By=spiffe://harness.local/envoy;URI=spiffe://harness.local/agent/{agent}"
    return md


async def test_identity_comes_from_the_bound_key_only_when_no_certificate_names_an_agent():
    bound = _authenticator({BOUND_AGENT: "bot"})
    by_key = await bound.authenticate_peer((), False, _headers())
    assert (by_key.agent, by_key.user, by_key.claims[AGENT_BY_KEY]) == ("bot", "bob", True)
    with_cert = await bound.authenticate_peer((), False, _headers("bot"))
    assert with_cert.agent == "bot" and AGENT_BY_KEY not in with_cert.claims
    with pytest.raises(Unauthenticated, match="bound to agent 'bot' and cannot act for agent 'mallet'"):
        await bound.authenticate_peer((), False, _headers("mallet"))
    unbound = await _authenticator({BOUND_AGENT: ""}).authenticate_peer((), False, _headers())
    assert unbound.agent == ""  # an ordinary key names a user, never an agent
