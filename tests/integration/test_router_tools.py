"""Governed tool calls against a real HTTP tool: pinning, policy per risk class, approvals,
result cache and idempotency, redaction of what is logged and returned, audit records."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2
from harness.registry.v1 import registry_pb2

from services.common import context as reqctx
from services.common.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, Unavailable
from services.router.budgets import BudgetRule, MemoryBudgets, PriceTable
from services.router.events import emit_each
from services.router.privacy import AgentRedactors
from services.router.result_cache import MemoryResultCache
from services.router.tools import ToolCall, ToolInvoker
from services.router.views import AccessDecision


class ToolServer:
    """A ledger tool: records each call; `/fail` answers 500, `/bad` 400, `/slow` takes 0.3 s."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.calls.append((self.path, body))
                if self.path == "/slow":
                    time.sleep(0.3)
                code = {"/fail": 500, "/bad": 400}.get(self.path, 200)
                reply = (
                    {"ok": True, "owner_phone": "13812345678", "echo": body}
                    if code == 200
                    else {"error": "no"}
                )
                data = json.dumps(reply).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"


def ledger(url: str) -> registry_pb2.Tool:
    act = registry_pb2.ToolAction
    return registry_pb2.Tool(
        name="ledger",
        version="1",
        endpoint=url,
        actions=[
            act(name="read", risk=common_pb2.RISK_CLASS_READ, idempotent=True, cache_ttl_s=60),
            act(name="write", risk=common_pb2.RISK_CLASS_WRITE),
            act(name="delete", risk=common_pb2.RISK_CLASS_DELETE, requires_approval=True),
            act(name="fail", risk=common_pb2.RISK_CLASS_READ),
            act(name="bad", risk=common_pb2.RISK_CLASS_READ),
            act(name="slow", risk=common_pb2.RISK_CLASS_WRITE),
        ],
    )


def rpa_agent(name: str = "rpa", tools: tuple[str, ...] = ("ledger",), pii: bool = True, revision: int = 1):
    a = registry_pb2.Agent(
        name=name, project="ledger", state=common_pb2.AGENT_STATE_ONLINE, revision=revision
    )
    a.versions.add(version="v1", models=["m"], tools=tools)
    if pii:
        a.data_policy.pii.add(kind="phone", mode=registry_pb2.MASK_MODE_MASK)
    return a


@dataclass
class FakeRegistry:
    tool_record: registry_pb2.Tool
    denied: set[tuple[str, str]] = field(default_factory=set)  # (object, action)
    agents: dict[str, registry_pb2.Agent] = field(default_factory=dict)  # default: rpa_agent()
    other_versions: list[registry_pb2.Tool] = field(default_factory=list)

    async def agent(self, name: str) -> registry_pb2.Agent:
        return self.agents.get(name) or rpa_agent()

    async def tool(self, name: str, version: str = "") -> registry_pb2.Tool | None:
        """Like the mirror: an exact version, or the newest when `version` is empty."""
        known = [t for t in (self.tool_record, *self.other_versions) if t.name == name]
        if version:
            return next((t for t in known if t.version == version), None)
        return max(known, key=lambda t: int(t.version.split(".")[0]), default=None)

    async def project_team(self, project: str) -> str:
        return "finance" if project == "ledger" else ""

    async def check(self, subject: str, domain: str, obj: str, action: str) -> AccessDecision:
        return AccessDecision(
            (obj, action) not in self.denied, f"p, {subject}, {domain}, {obj}, {action}, allow"
        )


class Events:
    def __init__(self) -> None:
        self.audit, self.usage = [], []
        self.failing = False

    def emit_audit(self, e) -> None:
        self.audit.append(e)

    def emit_usage(self, e) -> None:
        self.usage.append(e)

    def emit_call(self, events, journal) -> None:
        emit_each(self, events, journal)

    def check_durable(self) -> None:
        if self.failing:  # as a fail-closed shipper whose outbox cannot write
            raise Unavailable(
                "the audit outbox cannot record events durably; requests are refused (fail-closed)"
            )


class Gate:
    """Approvals decided by the test: state to return, approver and comment."""

    def __init__(self, state: int = audit_pb2.APPROVAL_STATE_PENDING) -> None:
        self.state, self.requests = state, []

    async def request(self, approval: audit_pb2.Approval, ttl_s: float) -> str:
        self.requests.append(approval)
        return f"ap-{len(self.requests)}"

    async def wait(self, approval_id: str, timeout_s: float) -> audit_pb2.Approval:
        return audit_pb2.Approval(id=approval_id, state=self.state, approver="carol", comment="not today")


@pytest.fixture
def world():
    server = ToolServer()
    registry, events, gate = FakeRegistry(ledger(server.url)), Events(), Gate()
    invoker = ToolInvoker(registry, events, AgentRedactors(), gate, MemoryResultCache())
    reqctx.set_current(reqctx.new_context(reqctx.Identity(agent="rpa", user="alice")))
    yield invoker, server, registry, events, gate
    server.httpd.shutdown()


async def test_a_read_is_called_redacted_in_the_log_and_the_answer_and_then_cached(world):
    invoker, server, _, events, _ = world
    call = ToolCall("ledger", "read", {"account": "42", "contact": "13912345678"})
    first = await invoker.invoke(call)
    assert server.calls == [
        ("/read", {"account": "42", "contact": "13912345678"})
    ]  # the tool gets real values
    assert first.decision == common_pb2.DECISION_ALLOW and first.result["owner_phone"] == "[PHONE]"
    record = events.audit[-1]
    assert record.kind == common_pb2.AUDIT_EVENT_KIND_TOOL_CALL and record.tool == "ledger@1"
    assert "13912345678" not in str(record) and "13812345678" not in str(record)
    assert dict(record.details["redactions"]) == {"phone": 3.0}  # 1 in the arguments, 2 in the result
    assert events.usage[-1].tool == "ledger" and events.usage[-1].tool_action == "read"
    again = await invoker.invoke(call)
    assert again.cached and len(server.calls) == 1


async def test_idempotency_key_returns_the_first_result(world):
    invoker, server, *_ = world
    call = ToolCall("ledger", "write", {"entry": 1}, idempotency_key="k1")
    await invoker.invoke(call)
    second = await invoker.invoke(call)
    assert second.cached and len(server.calls) == 1


async def test_pinning_catalog_and_policy_are_enforced(world):
    invoker, server, registry, events, _ = world
    with pytest.raises(PermissionDenied, match="may call \\['ledger'\\], not 'crm'"):
        await invoker.invoke(ToolCall("crm", "read"))
    with pytest.raises(NotFound, match="no action 'erase'"):
        await invoker.invoke(ToolCall("ledger", "erase"))
    registry.denied.add(("tool:ledger", "write"))
    with pytest.raises(PermissionDenied, match="may not write tool:ledger"):
        await invoker.invoke(ToolCall("ledger", "write", {"entry": 2}))
    assert (
        events.audit[-1].kind == common_pb2.AUDIT_EVENT_KIND_AUTHZ_DECISION
        and events.audit[-1].action == "write"
    )
    assert server.calls == []


async def test_a_delete_waits_for_approval_and_a_rejection_stops_it(world):
    invoker, server, _, events, gate = world
    pending = await invoker.invoke(ToolCall("ledger", "delete", {"ledger": "2024"}, approval_wait_s=0.1))
    assert pending.decision == common_pb2.DECISION_PENDING_APPROVAL and pending.approval_id == "ap-1"
    assert gate.requests[0].action == "delete" and gate.requests[0].correlation.request_id
    gate.state = audit_pb2.APPROVAL_STATE_REJECTED
    with pytest.raises(PermissionDenied, match="rejected by carol: not today"):
        await invoker.invoke(ToolCall("ledger", "delete", {"ledger": "2024"}))
    assert server.calls == []  # never reached the tool
    record = events.audit[-1]
    assert record.decision == common_pb2.DECISION_DENY and record.details["approval_id"] == "ap-2"
    gate.state = audit_pb2.APPROVAL_STATE_APPROVED
    done = await invoker.invoke(ToolCall("ledger", "delete", {"ledger": "2024"}))
    assert done.decision == common_pb2.DECISION_ALLOW and server.calls == [("/delete", {"ledger": "2024"})]


async def test_tool_failures_have_clear_statuses(world):
    invoker, *_ = world
    with pytest.raises(Unavailable, match="the tool failed \\(500\\)"):
        await invoker.invoke(ToolCall("ledger", "fail"))
    with pytest.raises(InvalidArgument, match="the tool refused the call \\(400\\)"):
        await invoker.invoke(ToolCall("ledger", "bad"))


async def test_tool_calls_are_charged_to_budgets_and_refused_over_the_limit(world):
    invoker, server, _, events, _ = world
    invoker.settings.budgets = budgets = MemoryBudgets()
    team = cost_pb2.BUDGET_SCOPE_TEAM
    budgets.update(
        [BudgetRule("finance-day", team, "finance", cost_pb2.BUDGET_PERIOD_DAILY, 2500)],
        PriceTable(tool_call={"ledger": 1000}),
    )
    await invoker.invoke(ToolCall("ledger", "write", {"entry": 1}))
    with pytest.raises(Unavailable):  # a failed call is not charged...
        await invoker.invoke(ToolCall("ledger", "fail"))
    await invoker.invoke(ToolCall("ledger", "write", {"entry": 2}))  # ...so a second fits
    calls = len(server.calls)
    with pytest.raises(ResourceExhausted, match="budget 'finance-day' \\(team 'finance', daily\\)"):
        await invoker.invoke(ToolCall("ledger", "write", {"entry": 3}))
    assert len(server.calls) == calls  # refused before the tool was called
    assert {u.actor.team for u in events.usage} == {"finance"}  # the project's team is charged


async def test_an_api_key_scoped_to_another_project_cannot_call_the_agents_tools(world):
    # The same refusal as Generate: the tool path shares the agent lookup (online_agent).
    invoker, server, *_ = world
    reqctx.set_current(reqctx.new_context(reqctx.Identity(agent="rpa", user="alice", project="marketing")))
    with pytest.raises(PermissionDenied, match="scoped to project 'marketing'"):
        await invoker.invoke(ToolCall("ledger", "read", {"account": "42"}))
    assert server.calls == []
