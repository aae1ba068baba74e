"""Governed tool calls (no gRPC server here): who may call which tool action, approval for the
risky ones, a result cache for idempotent reads, redaction, and an audit record of each call.

identify -> the agent version pins the tool (a request naming another version is refused) -> the
action exists in the catalog -> casbin: the user may invoke the agent, the agent may <risk class>
the tool -> idempotency key / result cache (tool_cache.py: per agent and user, bound to the raw
arguments; a hit is redacted again for the reader and audited)
-> approval when the action requires one (waits, bounded, for a decision made through the audit
service's approval RPCs) -> POST the arguments as JSON to `<endpoint>/<action>` (an `mcp+http(s)://`
endpoint: the MCP server's tool named as the action, through the `mcp` SDK) -> the result,
redacted per the agent's data policy -> audit (arguments redacted; kinds and counts only) and a
usage record (tool calls are priced).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf import struct_pb2
from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2

from services.common import context as reqctx
from services.common.access import agent_subject, user_subject
from services.common.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from services.common.mcp_client import call_tool as mcp_call_tool
from services.common.mcp_client import is_mcp_endpoint
from services.router import records
from services.router.budgets import BudgetEnforcer, BudgetReservation, Subjects
from services.router.result_cache import CacheKeys, ResultCache
from services.router.stages.resolve import check_access, online_agent, pick_version, require_caller
from services.router.tool_cache import ToolResults
from services.router.tool_listing import risk_name
from services.router.tool_upstream import Credentials, check_arguments

MAX_TOOL_ARGUMENTS_BYTES = 64 * 1024  # router.proto says the same; every front door refuses more
MAX_APPROVAL_WAIT_S = 600.0  # the longest a caller may ask a call to wait for its approval


@dataclass(frozen=True)
class ToolCall:
    tool: str
    action: str
    arguments: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    idempotency_key: str = ""
    approval_wait_s: float = 0.0  # 0 = the router's default


@dataclass
class ToolOutcome:
    result: dict[str, Any] | None
    decision: int
    approval_id: str = ""
    cached: bool = False
    duration_s: float = 0.0
    request_id: str = ""


class ApprovalGate(Protocol):
    async def request(self, approval: audit_pb2.Approval, ttl_s: float) -> str: ...

    async def wait(self, approval_id: str, timeout_s: float) -> audit_pb2.Approval: ...


class AuditApprovals:
    """Approvals through the audit service (RequestApproval, then GetApproval until decided)."""

    def __init__(self, stub) -> None:
        self._stub = stub

    async def request(self, approval: audit_pb2.Approval, ttl_s: float) -> str:
        # The tool call's event id doubles as the request key: a retried request is the same one.
        req = audit_pb2.RequestApprovalRequest(
            approval=approval, request_key=approval.correlation.parent_event_id
        )
        req.ttl.FromNanoseconds(int(ttl_s * 1e9))
        resp = await self._stub.RequestApproval(req, timeout=5.0)
        return resp.approval.id

    async def wait(self, approval_id: str, timeout_s: float) -> audit_pb2.Approval:
        """Long-polls GetApproval (the audit service answers as soon as it is decided)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = max(0.0, deadline - time.monotonic())
            req = audit_pb2.GetApprovalRequest(id=approval_id)
            req.wait.FromNanoseconds(int(min(left, 60.0) * 1e9))
            resp = await self._stub.GetApproval(req, timeout=min(left, 60.0) + 5.0)
            if resp.approval.state != audit_pb2.APPROVAL_STATE_PENDING or time.monotonic() >= deadline:
                return resp.approval


APPROVAL_GRACE_S = 2.0  # waiting past the approval's expiry, to hear that it expired
MAX_RESULT_BYTES = 4 * 1024 * 1024  # a tool's answer; larger ones are refused, not buffered


def post_json(
    url: str, body: dict[str, Any], timeout_s: float, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """One tool call over HTTP (blocking; run in a worker thread)."""
    data = json.dumps(body).encode()
    sent = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, method="POST", headers=sent)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            answer = resp.read(MAX_RESULT_BYTES + 1)
        if len(answer) > MAX_RESULT_BYTES:
            raise Unavailable(f"the tool at {url} answered more than {MAX_RESULT_BYTES} bytes (the limit)")
        payload = json.loads(answer or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode("utf-8", "replace")
        if 400 <= exc.code < 500:
            raise InvalidArgument(f"the tool refused the call ({exc.code}): {detail}") from exc
        raise Unavailable(f"the tool failed ({exc.code}): {detail}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise Unavailable(f"the tool at {url} is unreachable: {exc}") from exc
    except ValueError as exc:
        raise Unavailable(f"the tool at {url} answered with something that is not JSON") from exc
    return payload if isinstance(payload, dict) else {"result": payload}


@dataclass(frozen=True)
class _Target:
    """A call resolved against the registry: the agent's version, the pinned tool and action."""

    agent: registry_pb2.Agent
    tool: registry_pb2.Tool
    action: registry_pb2.ToolAction
    risk: str
    facts: records.CallFacts

    @property
    def cache_ttl_s(self) -> float:
        """Seconds a result may answer later identical reads (0: not cached)."""
        cacheable = self.action.idempotent and self.action.cache_ttl_s > 0
        return self.action.cache_ttl_s if cacheable else 0.0


class ToolInvoker:
    def __init__(
        self,
        registry,
        events,
        redactors,
        approvals: ApprovalGate,
        cache: ResultCache,
        *,
        default_approval_wait_s: float = 30.0,
        approval_ttl_s: float = 3600.0,
        http_timeout_s: float = 30.0,
        budgets: BudgetEnforcer | None = None,
        keys: CacheKeys | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.budgets = budgets
        self.credentials = credentials or Credentials(None)
        self.registry = registry
        self.events = events
        self.redactors = redactors
        self.approvals = approvals
        self.results = ToolResults(cache, keys or CacheKeys())
        self.default_approval_wait_s = default_approval_wait_s
        self.approval_ttl_s = approval_ttl_s
        self.http_timeout_s = http_timeout_s

    async def invoke(self, call: ToolCall) -> ToolOutcome:
        ctx = reqctx.current()
        ident = ctx.identity
        require_caller(ident)
        if not call.tool or not call.action:
            raise InvalidArgument("tool and action are required")
        target = await self._resolve(call, ident.user)
        tool, action = target.tool, target.action
        check_arguments(tool, action, call.arguments)  # before approval, cache or the tool see them
        found = self.redactors.for_agent(target.agent)
        redactor = found[0] if found is not None else None
        counts: dict[str, int] = {}
        logged_args = await self.redactors.redact_json(redactor, call.arguments, counts)
        scope = self.results.scope(
            target.agent.name, ident.user, tool.name, tool.version, action.name, call.arguments,
            call.idempotency_key,
        )  # fmt: skip
        # A duplicate of an idempotent call still running waits for it (bounded) instead of running.
        wait_s = (call.approval_wait_s or self.default_approval_wait_s) + self.http_timeout_s
        if (hit := await self.results.lookup(scope, target.cache_ttl_s > 0, wait_s)) is not None:
            result = await self.redactors.redact_json(redactor, hit, counts)  # the reader's policy, now
            self._record(target.facts, action.name, logged_args, counts, common_pb2.DECISION_ALLOW, "OK", "",
                         cached=True)  # fmt: skip
            await self.results.store(scope, result, 0.0, tool.endpoint)  # the key answers it from now on
            return ToolOutcome(result, common_pb2.DECISION_ALLOW, cached=True, request_id=ctx.request_id)
        try:
            outcome = await self._run(call, target, redactor, logged_args, counts)
        except BaseException:
            await self.results.release(scope)  # a failed call does not hold its key
            raise
        if outcome.result is None:  # pending approval: a retry asks again
            await self.results.release(scope)
        else:
            await self.results.store(scope, outcome.result, target.cache_ttl_s, tool.endpoint)
        return outcome

    async def _run(self, call: ToolCall, target: _Target, redactor, logged_args, counts) -> ToolOutcome:
        """Approval when the action needs one, then the call itself; the result redacted."""
        request_id = target.facts.ctx.request_id
        action = target.action
        # The call's audit record id, known up front so an approval can hang under it (lineage).
        facts = records.CallFacts(**{**target.facts.__dict__, "event_id": str(uuid.uuid4())})
        approval_id = ""
        if action.requires_approval:
            approval_id, pending = await self._approval(call, facts, target, logged_args, counts)
            if pending:
                return ToolOutcome(
                    None, common_pb2.DECISION_PENDING_APPROVAL, approval_id, request_id=request_id
                )
        raw, duration = await self._call(call, facts, target, logged_args, counts, approval_id)
        result = await self.redactors.redact_json(redactor, raw, counts)
        self._record(
            facts, action.name, logged_args, counts, common_pb2.DECISION_ALLOW, "OK", approval_id, duration
        )
        return ToolOutcome(result, common_pb2.DECISION_ALLOW, approval_id, False, duration, request_id)

    async def _resolve(self, call: ToolCall, user: str) -> _Target:
        """The agent's version pins the tool (at an exact version), the action exists, and casbin
        lets the user invoke the agent and the agent use the tool at the action's risk class."""
        agent = await online_agent(self.registry, reqctx.current().identity)
        version_label = pick_version(agent)
        version = next(v for v in agent.versions if v.version == version_label)
        team = await self.registry.project_team(agent.project)
        facts = records.CallFacts(reqctx.current(), agent.name, version_label, agent.project, team=team)
        pinned = {t.partition("@")[0]: t.partition("@")[2] for t in version.tools}
        if call.tool not in pinned:
            self._deny_pin(facts, call, f"pins {sorted(pinned)}")
            raise PermissionDenied(
                f"agent {agent.name!r} version {version_label} may call {sorted(pinned)}, not {call.tool!r}"
            )
        tool = await self._pinned_tool(facts, call, pinned[call.tool])
        action = next((a for a in tool.actions if a.name == call.action), None)
        if action is None:
            raise NotFound(
                f"tool {tool.name!r} has no action {call.action!r}; it has {[a.name for a in tool.actions]}"
            )
        risk = risk_name(action)
        facts = records.CallFacts(**{**facts.__dict__, "tool": f"{tool.name}@{tool.version}"})
        await self._authorize(facts, user_subject(user), f"agent:{agent.name}", "invoke")
        decision = await self._authorize(facts, agent_subject(agent.name), f"tool:{tool.name}", risk)
        facts = records.CallFacts(**{**facts.__dict__, "rule": decision.rule})
        return _Target(agent, tool, action, risk, facts)

    async def _pinned_tool(self, facts: records.CallFacts, call: ToolCall, pin: str) -> registry_pb2.Tool:
        """The tool at the pinned version ("" pins the newest); a request for another version is
        refused, never served from that version's endpoint and actions."""
        if call.version and pin and call.version != pin:
            self._deny_version(facts, call, f"{call.tool}@{pin}")
        tool = await self.registry.tool(call.tool, pin)
        if tool is None:
            at = f" version {pin!r}" if pin else ""
            raise NotFound(f"tool {call.tool!r}{at} is not in the registry's tool catalog")
        if call.version and call.version != tool.version:
            self._deny_version(facts, call, f"{call.tool} at its newest version ({tool.version})")
        return tool

    def _deny_version(self, facts: records.CallFacts, call: ToolCall, pinned_as: str) -> None:
        self._deny_pin(facts, call, f"pins {pinned_as}")
        raise PermissionDenied(
            f"agent {facts.agent!r} version {facts.agent_version} pins {pinned_as}, not version "
            f"{call.version!r}; leave `version` empty to call the pinned one"
        )

    def _deny_pin(self, facts: records.CallFacts, call: ToolCall, rule: str) -> None:
        """A call outside the agent version's pins is an authorization decision: audit it."""
        wanted = f"{call.tool}@{call.version}" if call.version else call.tool
        denied = records.CallFacts(
            **{**facts.__dict__, "rule": f"agent version {facts.agent_version} {rule}"}
        )
        self.events.emit_audit(records.authz_denied_event(denied, f"tool:{wanted}", call.action))

    async def _approval(self, call, facts, target: _Target, logged_args, counts) -> tuple[str, bool]:
        """(approval id, still pending); raises when the approval was refused or expired."""
        tool, action = target.tool, target.action
        approval_id, approved = await self._approve(call, facts, tool, action, logged_args, target.risk)
        if approved is None:
            self._record(facts, action.name, logged_args, counts, common_pb2.DECISION_PENDING_APPROVAL,
                         "PENDING", approval_id)  # fmt: skip
            return approval_id, True
        if approved.state == audit_pb2.APPROVAL_STATE_EXPIRED:
            self._record(facts, action.name, logged_args, counts, common_pb2.DECISION_DENY,
                         "DEADLINE_EXCEEDED", approval_id)  # fmt: skip
            raise DeadlineExceeded(
                f"{tool.name}.{action.name} needs an approval and nobody decided in time: approval "
                f"{approval_id} expired and can no longer be granted; call again to ask again"
            )
        if approved.state != audit_pb2.APPROVAL_STATE_APPROVED:
            state = audit_pb2.ApprovalState.Name(approved.state).removeprefix("APPROVAL_STATE_").lower()
            self._record(facts, action.name, logged_args, counts, common_pb2.DECISION_DENY,
                         "PERMISSION_DENIED", approval_id)  # fmt: skip
            who = f" by {approved.approver}" if approved.approver else ""
            why = f": {approved.comment}" if approved.comment else ""
            raise PermissionDenied(
                f"{tool.name}.{action.name} was {state}{who}{why} (approval {approval_id})"
            )
        return approval_id, False

    async def _call(self, call, facts, target: _Target, logged_args, counts, approval_id):
        """POSTs the arguments to the tool (budgets reserved and settled around it): (result, seconds)."""
        tool, action = target.tool, target.action
        ident = facts.ctx.identity
        hold = BudgetReservation()
        if self.budgets is not None:  # the call's price, against every budget that applies
            who = Subjects(ident.user, facts.team, facts.project, facts.agent)
            hold = await self.budgets.reserve_tool(who, tool.name)
        started = time.perf_counter()
        status = "OK"
        try:
            headers = await self.credentials.headers(tool)
            if is_mcp_endpoint(tool.endpoint):  # an MCP server: the action is its tool's name
                raw = await mcp_call_tool(
                    tool.endpoint, action.name, call.arguments, self.http_timeout_s, MAX_RESULT_BYTES, headers
                )
            else:
                url = f"{tool.endpoint.rstrip('/')}/{action.name}"
                raw = await asyncio.to_thread(post_json, url, call.arguments, self.http_timeout_s, headers)
        except (InvalidArgument, Unavailable, DeadlineExceeded) as exc:
            status = exc.code.name
            raise
        except BaseException:
            status = "CANCELLED"
            raise
        finally:
            duration = time.perf_counter() - started
            if self.budgets is not None:  # a failed call is not charged, as in the ledger
                price = self.budgets.prices.tool_cost(tool.name) if status == "OK" else 0
                await self.budgets.settle(hold, price)
            if status != "OK":
                self._record(facts, action.name, logged_args, counts, common_pb2.DECISION_ALLOW, status,
                             approval_id, duration)  # fmt: skip
        return raw, duration

    async def _approve(self, call, facts, tool, action, logged_args, risk):
        """(approval id, the decided approval, or None when still pending after the wait)."""
        args = struct_pb2.Struct()
        args.update(logged_args)
        correlation = records.correlation(facts)
        correlation.parent_event_id = facts.event_id
        approval = audit_pb2.Approval(
            requester=records.actor(facts),
            correlation=correlation,
            reason=f"{facts.agent} wants to {action.name} via {tool.name} ({risk})",
            tool=f"{tool.name}@{tool.version}",
            action=action.name,
            risk=action.risk,
            arguments=args,
        )
        # The approval lives as long as the caller waits: one granted later would run nothing.
        ttl_s = min(call.approval_wait_s or self.default_approval_wait_s, self.approval_ttl_s)
        try:
            approval_id = await self.approvals.request(approval, ttl_s)
            decided = await self.approvals.wait(approval_id, ttl_s + APPROVAL_GRACE_S)
        except Exception as exc:  # AioRpcError and friends: no approval service, no risky call
            raise Unavailable(
                f"{tool.name}.{action.name} needs an approval and the approval service failed: {exc}"
            ) from exc
        if decided.state == audit_pb2.APPROVAL_STATE_PENDING:
            return approval_id, None
        return approval_id, decided

    async def _authorize(self, facts: records.CallFacts, subject: str, obj: str, act: str):
        return await check_access(self.registry, self.events, facts, subject, obj, act)

    def _record(
        self, facts, action, args, counts, decision, status, approval_id, duration=0.0, cached=False
    ) -> None:
        details: dict[str, Any] = {"arguments": args, "duration_ms": round(duration * 1000, 3)}
        if counts:
            details["redactions"] = dict(counts)
        if approval_id:
            details["approval_id"] = approval_id
        if cached:  # answered from the result cache or an idempotency key: the tool did not run
            details["cached"] = True
        self.events.emit_audit(records.tool_call_event(facts, action, decision, status, details))
        if status == "OK":
            self.events.emit_usage(records.tool_usage_event(facts, action, cached=cached))
