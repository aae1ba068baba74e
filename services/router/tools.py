"""Governed tool calls (no gRPC server here): who may call which tool action, approval for the
risky ones, a result cache for idempotent reads, redaction, and an audit record of each call.
The path is one list of stages (`ToolInvoker.tool_stages`, stages/tool.py) run by the router's
director (pipeline.py), so settlement and records run however the call ends:

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

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Protocol

from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2
from prometheus_client import CollectorRegistry

from services.common.errors import InvalidArgument, Unavailable
from services.router.budgets import BudgetEnforcer
from services.router.call import Call, ToolCall, ToolRun
from services.router.metrics import RouterMetrics
from services.router.pipeline import Director, Stage
from services.router.privacy import AgentRedactors
from services.router.result_cache import CacheKeys, ResultCache
from services.router.stages.resolve import Identify
from services.router.stages.tool import (
    APPROVAL_GRACE_S,
    MAX_RESULT_BYTES,
    Approve,
    AuthorizeTool,
    CallTool,
    CheckToolArguments,
    PinnedTool,
    RecordToolCall,
    RedactToolData,
    ResolveAgentVersion,
    ToolBudget,
    ToolResultCache,
    ToolSettings,
    ValidateToolCall,
)
from services.router.tool_cache import ToolResults
from services.router.tool_upstream import Credentials

__all__ = ["APPROVAL_GRACE_S", "AuditApprovals", "ToolCall", "ToolInvoker", "ToolOutcome", "post_json"]

MAX_TOOL_ARGUMENTS_BYTES = 64 * 1024  # router.proto says the same; every front door refuses more
MAX_APPROVAL_WAIT_S = 600.0  # the longest a caller may ask a call to wait for its approval


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


class ToolInvoker:
    """The tool path's front: a `ToolCall` runs through `tool_stages` on the director
    (pipeline.py), as a generation does through the router's stages."""

    def __init__(
        self,
        registry,
        events,
        redactors: AgentRedactors,
        approvals: ApprovalGate,
        cache: ResultCache,
        *,
        default_approval_wait_s: float = 30.0,
        approval_ttl_s: float = 3600.0,
        http_timeout_s: float = 30.0,
        budgets: BudgetEnforcer | None = None,
        keys: CacheKeys | None = None,
        credentials: Credentials | None = None,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self.settings = ToolSettings(default_approval_wait_s, approval_ttl_s, http_timeout_s, budgets)
        self.registry = registry
        self.events = events
        self.redactors = redactors
        self.approvals = approvals
        self.results = ToolResults(cache, keys or CacheKeys())
        self.credentials = credentials or Credentials(None)
        self.metrics = metrics
        errors = (metrics or RouterMetrics(CollectorRegistry())).stage_errors
        stages = self.tool_stages()
        self.director = Director(stages, stages[-1], errors)

    def tool_stages(self) -> list[Stage]:
        """The tool path, in order (the last stage is the source). Identity and the agent's
        version are the model path's own stages; records settle last, after budgets."""
        return [
            Identify(),
            ValidateToolCall(),
            RecordToolCall(self.events),
            ResolveAgentVersion(self.registry),
            PinnedTool(self.registry, self.events),
            AuthorizeTool(self.registry, self.events, self.metrics),
            CheckToolArguments(),
            RedactToolData(self.redactors),
            ToolResultCache(self.results, self.settings),
            Approve(self.approvals, self.settings),
            ToolBudget(self.settings),
            CallTool(self.credentials, self.settings, post_json),
        ]

    async def invoke(self, request: ToolCall) -> ToolOutcome:
        call = Call(request, tool=ToolRun())
        async for _ in self.director.run(call):
            pass
        run = call.tool
        if run.pending:  # nothing ran: a retry asks again
            return ToolOutcome(
                None, common_pb2.DECISION_PENDING_APPROVAL, run.approval_id, request_id=call.request_id
            )
        return ToolOutcome(
            run.result,
            common_pb2.DECISION_ALLOW,
            run.approval_id,
            run.cached,
            run.duration_s,
            call.request_id,
        )
