"""The tool path's own stages (tools.ToolInvoker.tool_stages lists them in order): the pin check,
the argument check, redaction of arguments and result, the result cache and idempotency keys,
approval, budgets, the tool-call record, and the call itself (the source).

A tool call is a `Call` whose input is a `ToolCall`; its own state is `Call.tool` (a ToolRun).
The call leaves a tool-call record once it got as far as a decision about running the tool:
answered from the cache, held for approval, refused by the approver, or run (whatever came of
it). Refusals before that (pins, casbin) leave their authorization record instead.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2
from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2

from services.common.access import agent_subject, user_subject
from services.common.errors import DeadlineExceeded, InvalidArgument, NotFound, PermissionDenied, Unavailable
from services.common.mcp_client import call_tool as mcp_call_tool
from services.common.mcp_client import is_mcp_endpoint
from services.router import records
from services.router.budgets import BudgetEnforcer, Subjects
from services.router.call import Call, Chunk, ToolCall, ToolRun
from services.router.pipeline import Stage, outcome_of
from services.router.privacy import AgentRedactors
from services.router.stages.resolve import Authorize, ResolveAgent
from services.router.tool_cache import ToolResults
from services.router.tool_upstream import Credentials, check_arguments

APPROVAL_GRACE_S = 2.0  # waiting past the approval's expiry, to hear that it expired
MAX_RESULT_BYTES = 4 * 1024 * 1024  # a tool's answer; larger ones are refused, not buffered
RISK = {
    common_pb2.RISK_CLASS_READ: "read",
    common_pb2.RISK_CLASS_WRITE: "write",
    common_pb2.RISK_CLASS_DELETE: "delete",
}


def risk_name(action: registry_pb2.ToolAction) -> str:
    """The casbin action an agent needs on a tool to call `action`."""
    return RISK.get(action.risk, "write")  # an unclassified action is treated as a write


@dataclass
class ToolSettings:
    """The tool path's tunables, shared by its stages (the invoker's attributes set them)."""

    default_approval_wait_s: float = 30.0
    approval_ttl_s: float = 3600.0
    http_timeout_s: float = 30.0
    budgets: BudgetEnforcer | None = None


def _request(call: Call) -> ToolCall:
    assert isinstance(call.inp, ToolCall)
    return call.inp


def _run(call: Call) -> ToolRun:
    assert call.tool is not None
    return call.tool


class ValidateToolCall(Stage):
    name = "validate-tool"

    async def enter(self, call: Call) -> None:
        if not _request(call).tool or not _request(call).action:
            raise InvalidArgument("tool and action are required")


class RecordToolCall(Stage):
    """Refuses tool calls while the outbox cannot make events durable (fail-closed), as Record
    does model calls, and writes the tool-call audit record (arguments redacted; kinds and counts
    only) and, when it succeeded, a usage record (tool calls are priced), after budgets settled."""

    name = "record-tool"

    def __init__(self, events) -> None:
        self.events = events

    async def enter(self, call: Call) -> None:
        self.events.check_durable()  # fail-closed: no tool runs while its record cannot be kept
        call.audit_id = str(uuid.uuid4())  # known up front: an approval hangs under it (lineage)

    async def complete(self, call: Call, error: BaseException | None) -> None:
        run = _run(call)
        if run.decision is None or run.action is None:  # refused before a decision about the tool
            return
        status = "PENDING" if run.pending else outcome_of(error)
        details: dict[str, Any] = {
            "arguments": run.logged_args,
            "duration_ms": round(run.duration_s * 1000, 3),
        }
        if call.redactions:
            details["redactions"] = dict(call.redactions)
        if run.approval_id:
            details["approval_id"] = run.approval_id
        if run.cached:  # answered from the result cache or an idempotency key: the tool did not run
            details["cached"] = True
        facts = call.facts()
        self.events.emit_audit(records.tool_call_event(facts, run.action.name, run.decision, status, details))
        if status == "OK":
            self.events.emit_usage(records.tool_usage_event(facts, run.action.name, cached=run.cached))


class ResolveAgentVersion(ResolveAgent):
    """The agent and its version, as on the model path (no model: the tool path pins tools)."""

    async def enter(self, call: Call) -> None:
        await self.resolve_version(call)


class PinnedTool(Stage):
    """The agent version pins the tool (at an exact version, "" the newest) and the action
    exists; a call outside the pins is an authorization decision, audited."""

    name = "pinned-tool"

    def __init__(self, registry, events) -> None:
        self.registry = registry
        self.events = events

    async def enter(self, call: Call) -> None:
        req, run = _request(call), _run(call)
        pinned = {t.partition("@")[0]: t.partition("@")[2] for t in call.version.tools}
        if req.tool not in pinned:
            self._deny(call, f"pins {sorted(pinned)}")
            raise PermissionDenied(
                f"agent {call.agent_name!r} version {call.agent_version} may call {sorted(pinned)}, "
                f"not {req.tool!r}"
            )
        pin = pinned[req.tool]
        if req.version and pin and req.version != pin:
            self._deny_version(call, f"{req.tool}@{pin}")
        tool = await self.registry.tool(req.tool, pin)
        if tool is None:
            at = f" version {pin!r}" if pin else ""
            raise NotFound(f"tool {req.tool!r}{at} is not in the registry's tool catalog")
        if req.version and req.version != tool.version:
            self._deny_version(call, f"{req.tool} at its newest version ({tool.version})")
        action = next((a for a in tool.actions if a.name == req.action), None)
        if action is None:
            raise NotFound(
                f"tool {tool.name!r} has no action {req.action!r}; it has {[a.name for a in tool.actions]}"
            )
        run.tool, run.action, run.risk = tool, action, risk_name(action)

    def _deny_version(self, call: Call, pinned_as: str) -> None:
        self._deny(call, f"pins {pinned_as}")
        raise PermissionDenied(
            f"agent {call.agent_name!r} version {call.agent_version} pins {pinned_as}, not version "
            f"{_request(call).version!r}; leave `version` empty to call the pinned one"
        )

    def _deny(self, call: Call, rule: str) -> None:
        req = _request(call)
        wanted = f"{req.tool}@{req.version}" if req.version else req.tool
        denied = records.CallFacts(
            **{**call.facts().__dict__, "rule": f"agent version {call.agent_version} {rule}"}
        )
        self.events.emit_audit(records.authz_denied_event(denied, f"tool:{wanted}", req.action))


class AuthorizeTool(Authorize):
    """casbin: the user may invoke the agent, and the agent may <risk class> the tool."""

    name = "authorize-tool"

    async def enter(self, call: Call) -> None:
        run = _run(call)
        await self.check(call, user_subject(call.ctx.identity.user), f"agent:{call.agent_name}")
        decision = await self.check(call, agent_subject(call.agent_name), f"tool:{run.tool.name}", run.risk)
        call.rule = decision.rule


class CheckToolArguments(Stage):
    """The arguments fit the action's schema, before approval, the cache or the tool see them."""

    name = "check-arguments"

    async def enter(self, call: Call) -> None:
        run = _run(call)
        check_arguments(run.tool, run.action, _request(call).arguments)


class RedactToolData(Stage):
    """The agent's data policy on the arguments (for records and approvers) and on the result
    (for the caller; a cached one again, with the reader's policy as it is now)."""

    name = "redact-tool"

    def __init__(self, redactors: AgentRedactors) -> None:
        self.redactors = redactors

    async def enter(self, call: Call) -> None:
        run = _run(call)
        found = self.redactors.for_agent(call.agent)
        run.redactor = found[0] if found is not None else None
        run.logged_args = await self.redactors.redact_json(
            run.redactor, _request(call).arguments, call.redactions
        )

    async def on_chunk(self, call: Call, chunk: Chunk) -> Chunk:
        run = _run(call)
        if run.raw is not None:
            run.result = await self.redactors.redact_json(run.redactor, run.raw, call.redactions)
        return chunk


class ToolResultCache(Stage):
    """Idempotency keys and the result cache (tool_cache.py). A duplicate of an idempotent call
    still running waits for it (bounded) instead of running; a call that holds its key stores
    its result under it, or releases it when it ends without one."""

    name = "tool-cache"

    def __init__(self, results: ToolResults, settings: ToolSettings) -> None:
        self.results = results
        self.settings = settings

    async def enter(self, call: Call) -> None:
        req, run = _request(call), _run(call)
        tool, action = run.tool, run.action
        scope = self.results.scope(
            call.agent_name, call.ctx.identity.user, tool.name, tool.version, action.name, req.arguments,
            req.idempotency_key,
        )  # fmt: skip
        wait_s = (req.approval_wait_s or self.settings.default_approval_wait_s) + self.settings.http_timeout_s
        hit = await self.results.lookup(scope, self._ttl_s(run) > 0, wait_s)
        # Only now is the key this call's (or answered): a refused lookup must not release it.
        run.scope = scope
        if hit is not None:
            run.raw, run.cached, run.decision = hit, True, common_pb2.DECISION_ALLOW

    async def complete(self, call: Call, error: BaseException | None) -> None:
        run = _run(call)
        if run.scope is None:
            return
        if run.cached:  # this call held no key: the hit answers the key from now on
            if error is None and run.result is not None:
                await self.results.store(run.scope, run.result, 0.0, run.tool.endpoint)
        elif error is not None or run.result is None:  # failed, or pending approval: a retry runs it
            await self.results.release(run.scope)
        else:
            await self.results.store(run.scope, run.result, self._ttl_s(run), run.tool.endpoint)

    @staticmethod
    def _ttl_s(run: ToolRun) -> float:
        """Seconds a result may answer later identical reads (0: not cached)."""
        cacheable = run.action.idempotent and run.action.cache_ttl_s > 0
        return run.action.cache_ttl_s if cacheable else 0.0


class Approve(Stage):
    """An action that requires approval waits, bounded, for a decision made through the audit
    service; still pending after the wait, the call answers PENDING_APPROVAL (a retry asks again)."""

    name = "approve"

    def __init__(self, gate, settings: ToolSettings) -> None:
        self.gate = gate
        self.settings = settings

    async def enter(self, call: Call) -> None:
        run = _run(call)
        if run.cached or not run.action.requires_approval:
            return
        decided = await self._ask(call)
        label = f"{run.tool.name}.{run.action.name}"
        if decided.state == audit_pb2.APPROVAL_STATE_PENDING:
            run.pending, run.decision = True, common_pb2.DECISION_PENDING_APPROVAL
            return
        if decided.state == audit_pb2.APPROVAL_STATE_APPROVED:
            return
        run.decision = common_pb2.DECISION_DENY
        if decided.state == audit_pb2.APPROVAL_STATE_EXPIRED:
            raise DeadlineExceeded(
                f"{label} needs an approval and nobody decided in time: approval "
                f"{run.approval_id} expired and can no longer be granted; call again to ask again"
            )
        state = audit_pb2.ApprovalState.Name(decided.state).removeprefix("APPROVAL_STATE_").lower()
        who = f" by {decided.approver}" if decided.approver else ""
        why = f": {decided.comment}" if decided.comment else ""
        raise PermissionDenied(f"{label} was {state}{who}{why} (approval {run.approval_id})")

    async def _ask(self, call: Call) -> audit_pb2.Approval:
        run, facts = _run(call), call.facts()
        tool, action = run.tool, run.action
        args = struct_pb2.Struct()
        args.update(run.logged_args)
        correlation = records.correlation(facts)
        correlation.parent_event_id = facts.event_id
        approval = audit_pb2.Approval(
            requester=records.actor(facts), correlation=correlation,
            reason=f"{facts.agent} wants to {action.name} via {tool.name} ({run.risk})",
            tool=f"{tool.name}@{tool.version}", action=action.name, risk=action.risk, arguments=args,
        )  # fmt: skip
        # The approval lives as long as the caller waits: one granted later would run nothing.
        wait_s = _request(call).approval_wait_s or self.settings.default_approval_wait_s
        ttl_s = min(wait_s, self.settings.approval_ttl_s)
        try:
            run.approval_id = await self.gate.request(approval, ttl_s)
            return await self.gate.wait(run.approval_id, ttl_s + APPROVAL_GRACE_S)
        except Exception as exc:  # AioRpcError and friends: no approval service, no risky call
            raise Unavailable(
                f"{tool.name}.{action.name} needs an approval and the approval service failed: {exc}"
            ) from exc


class ToolBudget(Stage):
    """The call's price reserved against every budget that applies; settled once it ended (a
    failed call is not charged, as in the ledger)."""

    name = "tool-budget"

    def __init__(self, settings: ToolSettings) -> None:
        self.settings = settings

    async def enter(self, call: Call) -> None:
        run, budgets = _run(call), self.settings.budgets
        if budgets is None or run.cached or run.pending:
            return
        who = Subjects(call.ctx.identity.user, call.team, call.agent.project, call.agent_name)
        call.budget_hold = await budgets.reserve_tool(who, run.tool.name)

    async def complete(self, call: Call, error: BaseException | None) -> None:
        budgets = self.settings.budgets
        if call.budget_hold is None or budgets is None:
            return
        run = _run(call)
        await budgets.settle(
            call.budget_hold, budgets.prices.tool_cost(run.tool.name) if run.called_ok else 0
        )


class CallTool(Stage):
    """The source: POSTs the arguments as JSON to `<endpoint>/<action>` (an `mcp+http(s)://`
    endpoint: the MCP server's tool named as the action) and yields one final chunk once the
    answer (or a cached one) is in `Call.tool.raw`; nothing while the call waits for approval."""

    name = "call-tool"

    def __init__(self, credentials: Credentials, settings: ToolSettings, post_json) -> None:
        self.credentials = credentials
        self.settings = settings
        self.post_json = post_json  # blocking; run in a worker thread

    async def stream(self, call: Call):
        run = _run(call)
        if run.pending:
            return
        if not run.cached:
            run.decision = common_pb2.DECISION_ALLOW
            run.raw = await self._call(call, run)
        yield Chunk("", final=True)

    async def _call(self, call: Call, run: ToolRun) -> dict[str, Any]:
        tool, action, args = run.tool, run.action, _request(call).arguments
        timeout_s = self.settings.http_timeout_s
        started = time.perf_counter()
        try:
            headers = await self.credentials.headers(tool)
            if is_mcp_endpoint(tool.endpoint):  # an MCP server: the action is its tool's name
                raw = await mcp_call_tool(
                    tool.endpoint, action.name, args, timeout_s, MAX_RESULT_BYTES, headers
                )
            else:
                url = f"{tool.endpoint.rstrip('/')}/{action.name}"
                raw = await asyncio.to_thread(self.post_json, url, args, timeout_s, headers)
            run.called_ok = True
            return raw
        finally:
            run.duration_s = time.perf_counter() - started
