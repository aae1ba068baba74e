"""Agent-bound API keys through Envoy's server-TLS listener (no client certificate), called by the
official `openai` SDK (and the `mcp` SDK at /mcp): the key names the agent and the user, everything downstream is the same
call (audited as authenticated by key); nothing else gets an agent there, a client's own XFCC
header is stripped, and on the mTLS listener a bound key never acts for another agent's
certificate. The router core, HTTP front door and engine simulator are the OpenAI front-door
tests' own."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import httpx2
import openai
import pytest
import pytest_asyncio
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from starlette.routing import Route

from services.common.config import TlsFiles
from services.common.context import BOUND_AGENT, Identity
from services.common.errors import Unauthenticated
from services.common.http_server import start_http_server
from services.common.identity import AuthConfig, Authenticator, JwtVerifier
from services.devtools.certs import DEFAULT_TRUST_DOMAIN, issue_leaf
from services.envoy.key_listener import NAME as KEY_LISTENER
from services.router.mcp_front import PATH, McpFrontDoor
from services.router.openai_http.app import OpenAIFrontDoor
from services.router.privacy import AgentRedactors
from services.router.result_cache import MemoryResultCache
from services.router.tools import ToolInvoker
from tests.helpers.envoy import start_http_front_door_envoy
from tests.helpers.router_fakes import MODEL
from tests.integration.test_openai_frontdoor import MESSAGES, front  # noqa: F401 (the fixture)
from tests.integration.test_router_tools import Events, FakeRegistry, Gate, ToolServer, ledger, rpa_agent

pytestmark = pytest.mark.asyncio(loop_scope="module")
BOUND_KEY = "hk_2_bound-to-a1"  # bound to agent a1, acting for bob
PLAIN_KEY = "hk_3_not-bound"
TOOLS_KEY = "hk_4_bound-to-a1-in-ledger"  # bound to a1, acting for bob, in the tools' project


async def _keys(secret: str) -> Identity:
    if secret == BOUND_KEY:
        return Identity(user="bob", auth_method="api_key", project="p", claims={BOUND_AGENT: "a1"})
    if secret == TOOLS_KEY:
        return Identity(user="bob", auth_method="api_key", project="ledger", claims={BOUND_AGENT: "a1"})
    if secret == PLAIN_KEY:
        return Identity(user="bob", auth_method="api_key", project="p", claims={BOUND_AGENT: ""})
    raise Unauthenticated("API key is not valid")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def key_door(front, tmp_path_factory, jwt_keypair) -> AsyncIterator[tuple[str, str, object]]:  # noqa: F811
    """Envoy with both listeners in front of a router HTTP server whose keys may be agent-bound."""
    auth_cfg = AuthConfig(jwt_public_key_path=str(jwt_keypair[0]))
    auth = Authenticator(auth_cfg, JwtVerifier.from_config(auth_cfg), _keys)
    leaf = front.certs.service("router")
    tls = TlsFiles(str(leaf.cert), str(leaf.key), str(front.certs.ca_cert))
    tool = ToolServer()
    registry = FakeRegistry(ledger(tool.url))
    registry.agents = {"a1": rpa_agent("a1")}
    invoker = ToolInvoker(registry, Events(), AgentRedactors(), Gate(), MemoryResultCache())
    mcp = McpFrontDoor(invoker, auth)
    await mcp.start()
    app = OpenAIFrontDoor(front.router, auth).app([Route(PATH, mcp)])
    http = await start_http_server(app, "127.0.0.1", 0, tls)
    certs = front.certs
    envoy = start_http_front_door_envoy(
        certs, http.port, tmp_path_factory.mktemp("envoy-keys"), key_listen_port=0
    )
    try:
        await envoy.wait_ready_async(clusters=["router_http"])
        key_url = f"https://localhost:{envoy.listener_port(KEY_LISTENER)}/v1"
        mtls_url = f"https://localhost:{envoy.listener_port()}/v1"
        yield key_url, mtls_url, envoy
    finally:
        envoy.stop()
        await http.stop(1)
        await mcp.stop()
        tool.httpd.shutdown()


def _client(front, url: str, api_key: str, cert=None) -> openai.AsyncOpenAI:  # noqa: F811
    """The SDK over TLS that trusts the Harness CA, with a client certificate only when given."""
    verify = ssl.create_default_context(cafile=str(front.certs.ca_cert))
    if cert is not None:
        verify.load_cert_chain(str(cert.cert), str(cert.key))
    return openai.AsyncOpenAI(
        base_url=url, api_key=api_key, http_client=httpx2.AsyncClient(verify=verify), max_retries=0
    )


async def test_a_bound_key_without_a_certificate_calls_as_its_agent(front, key_door):  # noqa: F811
    key_url, _, _ = key_door
    front.events.audit.clear()
    async with _client(front, key_url, BOUND_KEY) as client:
        answer = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=4, extra_headers={"x-request-id": "req-key-1"}
        )
        models = [m.id async for m in client.models.list()]
    assert answer.choices[0].message.content and models == [MODEL]
    [record] = [e for e in front.events.audit if e.correlation.request_id == "req-key-1"]
    assert (record.actor.agent, record.actor.user, record.actor.auth_method) == ("a1", "bob", "agent_api_key")


async def test_nothing_but_a_bound_key_gets_an_agent_on_the_key_listener(front, key_door):  # noqa: F811
    key_url, _, _ = key_door
    forged = {
        "x-forwarded-client-cert": "By=spiffe://harness.local/envoy;URI=spiffe://harness.local/agent/a1"
    }
    for secret, headers in ((front.token, {}), (PLAIN_KEY, {}), (front.token, forged)):
        async with _client(front, key_url, secret) as client:
            with pytest.raises(openai.AuthenticationError) as refused:
                await client.chat.completions.create(
                    model=MODEL, messages=MESSAGES, max_tokens=4, extra_headers=headers
                )
        assert "no agent identity" in refused.value.message


async def test_a_bound_key_never_acts_for_another_agents_certificate(front, key_door):  # noqa: F811
    _, mtls_url, _ = key_door
    async with _client(front, mtls_url, BOUND_KEY, front.certs.agent("a1")) as same:
        assert (await same.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)).choices
    a2 = issue_leaf(front.certs.ca_cert.parent, "agent", "a2", DEFAULT_TRUST_DOMAIN)
    async with _client(front, mtls_url, BOUND_KEY, a2) as other:  # another agent's certificate
        with pytest.raises(openai.AuthenticationError) as refused:
            await other.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert "bound to agent 'a1'" in refused.value.message


async def test_mcp_takes_a_bound_key_on_the_key_listener_too(front, key_door):  # noqa: F811
    key_url, _, _ = key_door
    mcp_url = key_url.removesuffix("/v1") + PATH
    ca_only = ssl.create_default_context(cafile=str(front.certs.ca_cert))
    http = httpx2.AsyncClient(verify=ca_only, headers={"authorization": f"Bearer {TOOLS_KEY}"}, timeout=30)
    async with http, streamable_http_client(mcp_url, http_client=http) as streams:
        async with ClientSession(*streams) as session:
            await session.initialize()
            names = [t.name for t in (await session.list_tools()).tools]
            read = await session.call_tool("ledger.read", {"account": "k-1"})
    assert "ledger.read" in names and not read.is_error
