"""The router's registry copy follows the registry's Watch stream, over real mTLS gRPC.

Done-when of the registry issue: a change of an agent's state or of a policy reaches the
router within one second, and the copy survives a registry restart (it keeps answering while
the registry is down, then catches up).
"""

from __future__ import annotations

import pytest
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2 as pb
from harness.registry.v1.registry_pb2_grpc import RegistryStub

from services.common.config import ServerConfig, TlsFiles
from services.common.context import BOUND_AGENT
from services.common.errors import NotFound, Unauthenticated
from services.common.registry_mirror import RegistryMirror
from services.common.server import open_channel, start_server
from services.devtools.certs import make_certs
from services.registry.policy import Policy
from services.registry.seed import seed_registry
from services.registry.servicer import RegistryServicer
from services.registry.store import Store
from tests.helpers.polling import eventually
from tests.integration.test_registry_server import DEMO

AGENT = "demo-agent"
MODEL_RULE = ("agent:demo-agent", "ledger", "model:llama-3-8b", "invoke")


class Registry:
    """A registry on one port that can be stopped and started again over the same database."""

    def __init__(self, db_url: str, auth, tls: TlsFiles) -> None:
        self.db_url, self.auth, self.tls = db_url, auth, tls
        self.port = 0
        self.running = None
        self.store = None

    async def start(self) -> None:
        self.store = Store(self.db_url)
        servicer = RegistryServicer(self.store, Policy(self.store), self.auth.trust_domain)
        cfg = ServerConfig(name="registry", port=self.port, metrics_port=None, auth=self.auth, tls=self.tls)
        self.running = await start_server(cfg, servicer.register, api_key_resolver=servicer.resolve_api_key)
        self.port = self.running.port

    async def stop(self) -> None:
        await self.running.stop(0)
        self.store.close()


@pytest.fixture
async def setup(tmp_path, test_auth, db_url):
    certs = make_certs(tmp_path / "certs", services=("registry", "router"), agents=())

    def tls(name: str) -> TlsFiles:
        pair = certs.services[name]
        return TlsFiles(str(pair.cert), str(pair.key), str(certs.ca_cert))

    registry = Registry(db_url, test_auth, tls("registry"))
    await registry.start()
    # The router's own service certificate is all it needs: services may watch the registry.
    channel = open_channel(f"127.0.0.1:{registry.port}", tls("router"))
    stub = RegistryStub(channel)
    await seed_registry(stub, DEMO, ())
    # Keys resolved stay cached far longer than any wait below: a refusal there is the watch's.
    mirror = RegistryMirror(channel, ready_timeout_s=5.0, max_backoff_s=0.2, api_key_ttl_s=300.0)
    mirror.start()
    assert await mirror.wait_ready(30.0)
    yield registry, stub, mirror
    await mirror.stop()
    await channel.close()
    if registry.running is not None:
        await registry.stop()


async def test_snapshot_holds_agents_models_and_rules(setup):
    _, _, mirror = setup
    agent = await mirror.agent(AGENT)
    assert agent.state == common_pb2.AGENT_STATE_ONLINE and agent.project == "ledger"
    assert await mirror.project_team("ledger") == "finance" and await mirror.project_team("ghost") == ""
    assert (await mirror.model("llama-3-8b")).triton_model == "llama-3-8b-instruct"
    decision = await mirror.check(*MODEL_RULE)
    assert (
        decision.allowed and decision.rule == "p, agent:demo-agent, ledger, model:llama-3-8b, invoke, allow"
    )
    assert (
        await mirror.check("user:bob", "ledger", "agent:demo-agent", "invoke")
    ).allowed  # via role:analyst
    assert not (await mirror.check("user:mallory", "ledger", "agent:demo-agent", "invoke")).allowed
    with pytest.raises(NotFound, match="not registered"):
        await mirror.agent("ghost")


async def test_state_and_policy_changes_arrive_through_the_watch(setup):
    """Only the Watch stream changes the copy's agents and policy (no expiry, no polling), so
    the bounds here are hang guards: a loaded machine must not fail a working watch."""
    _, stub, mirror = setup
    await stub.SetAgentState(pb.SetAgentStateRequest(agent=AGENT, state=common_pb2.AGENT_STATE_DRAINING))

    async def draining():
        return (await mirror.agent(AGENT)).state == common_pb2.AGENT_STATE_DRAINING

    await eventually(draining, within_s=10.0)

    deny = pb.PolicyRule(ptype="p", values=[*MODEL_RULE, "deny"])
    await stub.AddPolicy(pb.AddPolicyRequest(rule=deny))

    async def denied():
        return not (await mirror.check(*MODEL_RULE)).allowed

    await eventually(denied, within_s=10.0)
    await stub.RemovePolicy(pb.RemovePolicyRequest(rule=deny))

    async def allowed_again():
        return (await mirror.check(*MODEL_RULE)).allowed

    await eventually(allowed_again, within_s=10.0)


async def test_the_copy_survives_a_registry_restart_and_catches_up(setup):
    registry, stub, mirror = setup
    await registry.stop()
    registry.running = None
    # Registry down: the router still answers from its copy.
    assert (await mirror.agent(AGENT)).state == common_pb2.AGENT_STATE_ONLINE
    assert (await mirror.check(*MODEL_RULE)).allowed

    async def disconnected():
        return not mirror.connected

    await eventually(disconnected, within_s=5.0)
    await registry.start()  # same port, same database
    await stub.SetAgentState(pb.SetAgentStateRequest(agent=AGENT, state=common_pb2.AGENT_STATE_DRAINING))

    async def draining():
        return (await mirror.agent(AGENT)).state == common_pb2.AGENT_STATE_DRAINING

    await eventually(draining, within_s=5.0)
    assert mirror.connected


async def test_a_change_that_cannot_be_applied_does_not_end_the_watch(setup, caplog):
    """One failure while applying (a bug, an unexpected message) used to end the watch task for
    good, leaving the router on a stale registry; now it watches again and catches up."""
    _, stub, mirror = setup
    apply, failures = mirror._apply, []

    async def failing_once(message):
        if not failures and not message.snapshot:
            failures.append(message.revision)
            raise RuntimeError("could not apply")
        await apply(message)

    mirror._apply = failing_once
    await stub.SetAgentState(pb.SetAgentStateRequest(agent=AGENT, state=common_pb2.AGENT_STATE_DRAINING))

    async def draining():
        return (await mirror.agent(AGENT)).state == common_pb2.AGENT_STATE_DRAINING

    await eventually(draining, within_s=5.0)
    assert failures and any("applying a registry change failed" in r.getMessage() for r in caplog.records)


async def test_a_revoked_api_key_is_refused_as_soon_as_the_watch_says_so(tmp_path, test_auth, db_url):
    """Resolved keys are cached (here for 5 minutes); a revocation must not wait for the cache."""
    certs = make_certs(tmp_path / "certs", services=("registry", "router"), agents=())
    pair = {n: TlsFiles(str(certs.services[n].cert), str(certs.services[n].key), str(certs.ca_cert))
            for n in ("registry", "router")}  # fmt: skip
    registry = Registry(db_url, test_auth, pair["registry"])
    await registry.start()
    channel = open_channel(f"127.0.0.1:{registry.port}", pair["router"])
    stub = RegistryStub(channel)
    await seed_registry(stub, DEMO, ())
    mirror = RegistryMirror(channel, ready_timeout_s=5.0, max_backoff_s=0.2, api_key_ttl_s=300.0)
    mirror.start()
    try:
        assert await mirror.wait_ready(30.0)
        created = await stub.CreateApiKey(pb.CreateApiKeyRequest(user="bob", project="ledger"))
        other = await stub.CreateApiKey(pb.CreateApiKeyRequest(user="bob", project="ledger"))
        assert (await mirror.resolve_api_key(created.secret)).user == "bob"  # now cached
        await stub.RevokeApiKey(pb.RevokeApiKeyRequest(id=created.key.id))

        async def refused() -> bool:
            try:
                await mirror.resolve_api_key(created.secret)
            except Unauthenticated:
                return True
            return False

        await eventually(refused, within_s=10.0)  # the key stays cached 300 s otherwise
        assert (await mirror.resolve_api_key(other.secret)).user == "bob"  # other keys unaffected
    finally:
        await mirror.stop()
        await channel.close()
        await registry.stop()


async def test_an_agent_bound_key_names_its_agent_until_the_agents_switch_goes_off(setup):
    """The router's copy: a bound key resolves with its agent; the switch turned off refuses it as
    soon as the Watch stream says so (the resolved key stays cached otherwise)."""
    _, stub, mirror = setup
    await stub.SetAgentApiKeyAuth(pb.SetAgentApiKeyAuthRequest(agent=AGENT, enabled=True))
    created = await stub.CreateApiKey(pb.CreateApiKeyRequest(user="bob", project="ledger", agent=AGENT))

    async def switch_is(on: bool) -> bool:
        agent = await mirror.agent(AGENT)
        return agent.api_key_auth is on

    await eventually(lambda: switch_is(True), within_s=10.0)
    resolved = await mirror.resolve_api_key(created.secret)
    assert (resolved.user, resolved.claims[BOUND_AGENT]) == ("bob", AGENT)
    await stub.SetAgentApiKeyAuth(pb.SetAgentApiKeyAuthRequest(agent=AGENT, enabled=False))

    async def refused() -> bool:
        try:
            await mirror.resolve_api_key(created.secret)
        except Unauthenticated as exc:
            return "does not accept API keys" in exc.message
        return False

    await eventually(refused, within_s=10.0)  # the key stays cached 300 s otherwise
