"""The MCP front door through a real Envoy with mTLS, called by the official `mcp` SDK client.

Behind Envoy: the router's HTTP server (TLS with the router's certificate, client certificates
required) serving /mcp beside the OpenAI API, over the real ToolInvoker and a real HTTP ledger
tool; the registry is the in-memory stand-in of the tool tests and approvals are decided by the
test (as carol would through the audit service).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest
import pytest_asyncio
from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from starlette.routing import Route

from services.common.config import TlsFiles
from services.common.http_server import HttpServer, start_http_server
from services.common.identity import AuthConfig, Authenticator, JwtVerifier, mint_jwt
from services.devtools.certs import CertBundle, make_certs
from services.router.mcp_front import PATH, McpFrontDoor
from services.router.openai_http.app import OpenAIFrontDoor
from services.router.privacy import AgentRedactors
from services.router.result_cache import CacheKeys, MemoryResultCache
from services.router.tools import MAX_TOOL_ARGUMENTS_BYTES, ToolInvoker
from services.router.views import AccessDecision
from tests.helpers.envoy import EnvoyProcess, start_http_front_door_envoy
from tests.integration.test_router_tools import Events, FakeRegistry, ToolServer, ledger, rpa_agent

pytestmark = pytest.mark.asyncio(loop_scope="module")
REJECTED = audit_pb2.APPROVAL_STATE_REJECTED


class DecidedGate:
    """Approvals that stay pending until the test decides them (as carol, through the audit service)."""

    def __init__(self) -> None:
        self.requests: list[audit_pb2.Approval] = []
        self.decision: asyncio.Future | None = None

    async def request(self, approval: audit_pb2.Approval, ttl_s: float) -> str:
        self.requests.append(approval)
        self.decision = asyncio.get_running_loop().create_future()
        return f"ap-{len(self.requests)}"

    async def wait(self, approval_id: str, timeout_s: float) -> audit_pb2.Approval:
        assert self.decision is not None
        try:
            state, approver, comment = await asyncio.wait_for(asyncio.shield(self.decision), timeout_s)
        except TimeoutError:
            return audit_pb2.Approval(id=approval_id, state=audit_pb2.APPROVAL_STATE_PENDING)
        return audit_pb2.Approval(id=approval_id, state=state, approver=approver, comment=comment)

    def decide(self, state: int, approver: str, comment: str) -> None:
        assert self.decision is not None
        self.decision.set_result((state, approver, comment))


@dataclass
class PolicyRegistry(FakeRegistry):
    """The tool tests' registry, with denials per (subject, object, action)."""

    denied_for: set[tuple[str, str, str]] = field(default_factory=set)

    async def check(self, subject: str, domain: str, obj: str, action: str) -> AccessDecision:
        if (subject, obj, action) in self.denied_for:
            return AccessDecision(False, "")
        return await super().check(subject, domain, obj, action)


@dataclass
class Front:
    certs: CertBundle
    envoy: EnvoyProcess
    http: HttpServer
    mcp: McpFrontDoor
    registry: PolicyRegistry
    events: Events
    gate: DecidedGate
    tool: ToolServer
    tokens: dict[str, str]

    @property
    def url(self) -> str:
        return f"https://localhost:{self.envoy.listener_port()}{PATH}"

    def tls(self, agent: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.certs.ca_cert))
        leaf = self.certs.agent(agent)
        ctx.load_cert_chain(str(leaf.cert), str(leaf.key))
        return ctx

    @contextlib.asynccontextmanager
    async def session(
        self, agent: str = "rpa", user: str = "alice", headers: dict[str, str] | None = None
    ) -> AsyncIterator[ClientSession]:
        """What an agent does: the SDK's client over an httpx client with its certificate."""
        auth = {"authorization": f"Bearer {self.tokens[user]}"} if user else {}
        http = httpx2.AsyncClient(verify=self.tls(agent), headers={**auth, **(headers or {})}, timeout=30)
        async with http, streamable_http_client(self.url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


WRITE_SCHEMA = (
    '{"type":"object","properties":{"account":{"type":"string"},"amount":{"type":"number"}},'
    '"required":["account","amount"]}'
)


def catalog(url: str) -> tuple[registry_pb2.Tool, registry_pb2.Tool]:
    crm = registry_pb2.Tool(name="crm", version="1", endpoint=url, description="Customer records")
    crm.actions.add(name="read", risk=common_pb2.RISK_CLASS_READ, idempotent=True, cache_ttl_s=60)
    books = ledger(url)
    write = next(a for a in books.actions if a.name == "write")
    write.description, write.input_schema = "Append an entry", WRITE_SCHEMA
    return books, crm


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def front(tmp_path_factory, jwt_keypair) -> AsyncIterator[Front]:
    certs = make_certs(tmp_path_factory.mktemp("certs"), agents=["rpa", "clerk"], services=["router"])
    tool = ToolServer()
    ledger_tool, crm = catalog(tool.url)
    registry = PolicyRegistry(ledger_tool, other_versions=[crm])
    registry.agents = {"rpa": rpa_agent(), "clerk": rpa_agent("clerk", pii=False)}
    registry.denied_for = {("agent:clerk", "tool:ledger", "delete"), ("agent:clerk", "tool:ledger", "write")}
    events, gate = Events(), DecidedGate()
    invoker = ToolInvoker(
        registry, events, AgentRedactors(), gate, MemoryResultCache(), keys=CacheKeys("k"),
        default_approval_wait_s=20.0,
    )  # fmt: skip
    pub, private = jwt_keypair
    auth_cfg = AuthConfig(jwt_public_key_path=str(pub))
    auth = Authenticator(auth_cfg, JwtVerifier.from_config(auth_cfg), None)
    mcp = McpFrontDoor(invoker, auth, progress_interval_s=0.05)
    await mcp.start()
    leaf = certs.service("router")
    tls = TlsFiles(str(leaf.cert), str(leaf.key), str(certs.ca_cert))
    app = OpenAIFrontDoor(None, auth).app([Route(PATH, mcp)])  # type: ignore[arg-type]
    http = await start_http_server(app, "127.0.0.1", 0, tls)
    envoy = start_http_front_door_envoy(certs, http.port, tmp_path_factory.mktemp("envoy"))
    try:
        await envoy.wait_ready_async(clusters=["router_http"])
        tokens = {u: mint_jwt(private, u) for u in ("alice", "bob")}
        yield Front(certs, envoy, http, mcp, registry, events, gate, tool, tokens)
    finally:
        envoy.stop()
        await http.stop(1)
        await mcp.stop()
        tool.httpd.shutdown()


def _text(result) -> str:
    return " ".join(c.text for c in result.content)


async def test_list_shows_only_what_the_agent_pins_and_may_call_with_risk_hints(front):
    async with front.session("rpa") as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
    # crm is in the catalog, but rpa's version pins only ledger.
    assert sorted(tools) == [f"ledger.{a}" for a in ("bad", "delete", "fail", "read", "slow", "write")]
    read, delete, write = tools["ledger.read"], tools["ledger.delete"], tools["ledger.write"]
    assert read.annotations.read_only_hint and not read.annotations.destructive_hint
    assert delete.annotations.destructive_hint and not delete.annotations.read_only_hint
    assert not write.annotations.read_only_hint and not write.annotations.destructive_hint
    assert "risk delete; each call waits for a human approval" in delete.description
    assert delete.meta["harness/risk"] == "delete" and delete.meta["harness/tool_version"] == "1"
    assert read.input_schema == {"type": "object"}  # no schema in the catalog: any object
    assert write.input_schema == json.loads(WRITE_SCHEMA) and write.description.startswith(
        "Append an entry ["
    )
    async with front.session("clerk") as session:  # policy denies clerk writes and deletes
        names = sorted(t.name for t in (await session.list_tools()).tools)
    assert "ledger.delete" not in names and "ledger.write" not in names and "ledger.read" in names


async def test_a_call_runs_the_governed_path_and_refusals_are_tool_errors(front):
    async with front.session("rpa") as session:
        ok = await session.call_tool("ledger.read", {"account": "mcp-1", "contact": "13912345678"})
        unpinned = await session.call_tool("crm.read", {})
        unknown = await session.call_tool("ledger.erase", {})
        unnamed = await session.call_tool("ledger", {})
        huge = await session.call_tool("ledger.write", {"blob": "x" * MAX_TOOL_ARGUMENTS_BYTES})
        still_alive = await session.call_tool("ledger.read", {"account": "mcp-1", "contact": "13912345678"})
    assert not ok.is_error and ok.structured_content["owner_phone"] == "[PHONE]"  # redacted for rpa
    assert ok.meta["harness/cached"] is False and still_alive.meta["harness/cached"] is True
    assert unpinned.is_error and "may call ['ledger'], not 'crm'" in _text(unpinned)
    assert unknown.is_error and "no action 'erase'" in _text(unknown)
    assert unnamed.is_error and "tools are named `tool.action`" in _text(unnamed)
    assert huge.is_error and f"the limit is {MAX_TOOL_ARGUMENTS_BYTES}" in _text(huge)
    assert not any(body.get("blob") for _, body in front.tool.calls)  # never reached the tool


async def test_the_ledger_story_delete_waits_and_a_rejection_names_approver_and_reason(front):
    front.events.audit.clear()
    headers = {"x-harness-session-id": "s-ledger", "x-harness-step-id": "step-7", "x-request-id": "req-mcp-1"}
    progress: list[str] = []

    async def heard(done: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    async with front.session("rpa", headers=headers) as session:
        call = asyncio.create_task(
            session.call_tool("ledger.delete", {"ledger": "2024"}, progress_callback=heard)
        )
        while not front.gate.requests:  # the call is waiting for its approval
            await asyncio.sleep(0.01)
        while not progress:
            await asyncio.sleep(0.01)
        assert not call.done()
        front.gate.decide(REJECTED, "carol", "the quarter is not closed")
        result = await call
    assert result.is_error and result.meta["harness/code"] == "PERMISSION_DENIED"
    assert "rejected by carol: the quarter is not closed" in _text(result)
    assert "still running" in progress[0]
    assert ("/delete", {"ledger": "2024"}) not in front.tool.calls
    [approval] = front.gate.requests
    [record] = [e for e in front.events.audit if e.kind == common_pb2.AUDIT_EVENT_KIND_TOOL_CALL]
    # Lineage: the tool call under the session and step the agent sent; the approval under the call.
    for corr in (record.correlation, approval.correlation):
        assert (corr.session_id, corr.step_id, corr.request_id) == ("s-ledger", "step-7", "req-mcp-1")
    assert approval.correlation.parent_event_id == record.event_id
    assert record.decision == common_pb2.DECISION_DENY and record.actor.user == "alice"
    assert record.actor.agent == "rpa" and record.details["approval_id"] == "ap-1"


async def test_cached_reads_never_cross_agents_or_users(front):
    args = {"account": "shared-42", "contact": "13812345678"}
    before = len(front.tool.calls)
    answers = {}
    for agent, user in (("rpa", "alice"), ("rpa", "bob"), ("clerk", "alice"), ("clerk", "bob")):
        async with front.session(agent, user) as session:
            first = await session.call_tool("ledger.read", args)
            again = await session.call_tool("ledger.read", args)
        assert not first.meta["harness/cached"] and again.meta["harness/cached"], (agent, user)
        answers[agent, user] = first.structured_content["owner_phone"]
    assert len(front.tool.calls) - before == 4  # each (agent, user) ran the tool once
    assert answers["rpa", "alice"] == answers["rpa", "bob"] == "[PHONE]"
    assert answers["clerk", "alice"] == answers["clerk", "bob"] == "13812345678"  # clerk keeps phones


async def test_identity_comes_from_the_connection_and_the_bearer_only(front):
    async with httpx2.AsyncClient(verify=front.tls("rpa"), timeout=10) as http:
        anonymous = await http.post(
            front.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"accept": "application/json, text/event-stream"},
        )  # fmt: skip
        forged = await http.post(
            front.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"accept": "application/json, text/event-stream",
                     "x-forwarded-client-cert": "URI=spiffe://harness.local/agent/clerk",
                     "authorization": "Bearer not-a-jwt"},
        )  # fmt: skip
    assert anonymous.status_code == 401 and "no user credentials" in anonymous.json()["error"]["message"]
    assert forged.status_code == 401


async def test_the_readme_snippet_runs_as_printed(front):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("<!-- mcp-snippet -->", 1)[1].split("<!-- /mcp-snippet -->", 1)[0]
    code = block.split("```python\n", 1)[1].rsplit("```", 1)[0]
    leaf = front.certs.agent("rpa")
    env = {
        **os.environ, "HARNESS_CA": str(front.certs.ca_cert), "HARNESS_CERT": str(leaf.cert),
        "HARNESS_KEY": str(leaf.key), "HARNESS_TOKEN": front.tokens["alice"], "HARNESS_MCP_URL": front.url,
    }  # fmt: skip
    front.events.audit.clear()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert any(line.startswith("ledger.read read-only") for line in lines), lines
    assert lines[-1].startswith("result: {") and "'owner_phone': '[PHONE]'" in lines[-1]
    [record] = [e for e in front.events.audit if e.kind == common_pb2.AUDIT_EVENT_KIND_TOOL_CALL]
    assert (record.correlation.session_id, record.correlation.step_id) == ("case-1234", "2")


async def test_an_undecided_approval_ends_within_the_wait_the_caller_asked_for(front):
    async with front.session("rpa", headers={"x-harness-approval-wait-s": "0.3"}) as session:
        pending = await session.call_tool("ledger.delete", {"ledger": "2025"})
    assert pending.is_error and pending.meta["harness/code"] == "PENDING_APPROVAL"
    assert f"waiting for approval ap-{len(front.gate.requests)} and nobody decided in time" in _text(pending)
    for bad in ("abc", "0", "601", "nan"):
        async with front.session("rpa", headers={"x-harness-approval-wait-s": bad}) as session:
            refused = await session.call_tool("ledger.delete", {"ledger": "2025"})
        assert refused.is_error and "x-harness-approval-wait-s must be seconds in (0, 600]" in _text(refused)
    assert ("/delete", {"ledger": "2025"}) not in front.tool.calls


async def test_a_user_who_may_not_invoke_the_agent_gets_a_refusal_not_an_internal_error(front):
    front.registry.denied_for.add(("user:bob", "agent:rpa", "invoke"))
    try:
        async with front.session("rpa", "bob") as session:
            with pytest.raises(MCPError) as refused:
                await session.list_tools()
            denied = await session.call_tool("ledger.read", {"account": "1"})
    finally:
        front.registry.denied_for.discard(("user:bob", "agent:rpa", "invoke"))
    assert refused.value.error.code == -32001 and refused.value.error.data == {"status": "PERMISSION_DENIED"}
    assert "user 'bob' may not invoke agent 'rpa'" in refused.value.error.message
    assert denied.is_error and "may not invoke agent:rpa" in _text(denied)


async def test_arguments_that_break_the_schema_are_a_tool_error_naming_the_field(front):
    front.tool.calls.clear()
    async with front.session("rpa") as session:
        wrong = await session.call_tool("ledger.write", {"account": "a-1", "amount": "ten"})
        missing = await session.call_tool("ledger.write", {"account": "a-1"})
    assert wrong.is_error and "arguments.amount: 'ten' is not of type 'number'" in _text(wrong)
    assert missing.is_error and "'amount' is a required property" in _text(missing)
    assert wrong.meta["harness/code"] == "INVALID_ARGUMENT" and front.tool.calls == []
