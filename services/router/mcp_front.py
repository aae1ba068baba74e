"""The Model Context Protocol as a thin front door onto the governed tool path.

Served at `/mcp` (streamable HTTP, stateless: every HTTP request stands alone, so identity is
decided per request) by the official `mcp` SDK, on the router's HTTP port beside the OpenAI API.
Each request: context from the headers (x-request-id, x-harness-session-id/step-id) -> identity
exactly as the other front doors (agent from Envoy's XFCC on connections whose peer certificate is
Envoy's; user from `Authorization: Bearer <JWT or API key>`; refused with 401 before MCP sees it)
-> `tools/list`: the actions the agent and user may call (tool_listing.py), named `tool.action`
-> `tools/call`: ToolInvoker.invoke, which decides everything (pins, casbin per risk class,
redaction, cache and idempotency keys, approvals, budgets, audit and usage). A refusal of any kind
is an MCP tool error (isError) carrying the router's message, never a protocol failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from starlette.requests import Request
from starlette.responses import Response

from services.common import context as reqctx
from services.common.errors import HarnessError, InvalidArgument
from services.common.http_server import PEER_IDS_KEY, TLS_KEY
from services.common.identity import Authenticator, refuse_bad_headers
from services.common.limits import check_json
from services.router.mcp_requests import BadMcpRequest, check_content_type, check_request, read_body
from services.router.openai_http import errors as http_errors
from services.router.stages.resolve import require_caller
from services.router.tool_listing import CallableAction, callable_actions
from services.router.tools import (
    MAX_APPROVAL_WAIT_S,
    MAX_TOOL_ARGUMENTS_BYTES,
    ToolCall,
    ToolInvoker,
    ToolOutcome,
)

log = logging.getLogger("harness.router.mcp")
FRONTDOOR = "mcp"
PATH = "/mcp"
CONTEXT_KEY = "harness.context"
IDEMPOTENCY_HEADER = "idempotency-key"
MAX_IDEMPOTENCY_KEY_CHARS = 128
APPROVAL_WAIT_HEADER = "x-harness-approval-wait-s"
MAX_BODY_BYTES = MAX_TOOL_ARGUMENTS_BYTES + 16 * 1024  # the arguments and the JSON-RPC envelope
REFUSED = -32001  # JSON-RPC server error: the request was refused (the status in `data`)
PROGRESS_INTERVAL_S = 5.0  # while a call waits (an approval), the client hears it is alive


class McpFrontDoor:
    def __init__(
        self, tools: ToolInvoker, auth: Authenticator, *, progress_interval_s: float = PROGRESS_INTERVAL_S
    ) -> None:
        self.tools = tools
        self.auth = auth
        self.progress_interval_s = progress_interval_s
        server = Server("harness", on_list_tools=self._list_tools, on_call_tool=self._call_tool)
        # Stateless: no MCP session outlives its HTTP request, so none can be reused by another caller.
        self.sessions = StreamableHTTPSessionManager(
            server, stateless=True, max_request_body_size=MAX_BODY_BYTES
        )
        self._mcp = StreamableHTTPASGIApp(self.sessions)
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    # --- lifecycle: the SDK's session manager runs in its own task for the server's life ------
    async def start(self) -> None:
        started = asyncio.Event()

        async def run() -> None:
            async with self.sessions.run():
                started.set()
                await self._stop.wait()

        self._task = asyncio.create_task(run(), name="mcp-sessions")
        waiter = asyncio.create_task(started.wait())
        await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._task.done():
            self._task.result()  # raises what stopped it

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    # --- the ASGI entry: identity first, then the SDK ----------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        if scope["method"] != "POST":
            # Stateless: no server-to-client stream to open on GET (the SDK would hold one open
            # forever, with nothing ever to send) and no session to DELETE. The spec's answer: 405.
            await _refusal(405, f"{scope['method']} is not served here: send each MCP request as a POST")(
                scope, receive, send
            )
            return
        request = Request(scope)
        ctx = reqctx.context_from_metadata(request.headers.items(), FRONTDOOR)
        try:
            refuse_bad_headers(request.headers.items())
            identity = await self.auth.authenticate_peer(
                scope.get(PEER_IDS_KEY, ()), scope.get(TLS_KEY, False), request.headers
            )
            require_caller(identity)  # every MCP method acts for an agent and a user
        except HarnessError as exc:
            await _refusal(http_errors.describe(exc)[0], exc.message)(scope, receive, send)
            return
        scope[CONTEXT_KEY] = dataclasses.replace(ctx, identity=identity)
        try:
            check_content_type(request.headers.get("content-type", ""))
            body = await read_body(receive, request.headers.get("content-length", ""), MAX_BODY_BYTES)
            check_request(body)
        except BadMcpRequest as exc:
            await Response(exc.body(), exc.status, media_type="application/json")(scope, receive, send)
            return
        await self._mcp(scope, _replayed(body, receive), send)

    # --- MCP methods ------------------------------------------------------------------------
    async def _list_tools(self, ctx, params) -> types.ListToolsResult:
        self._enter(ctx)
        try:
            found = await callable_actions(self.tools.registry)
        except HarnessError as exc:  # the SDK would answer any other exception "Internal server error"
            raise MCPError(REFUSED, exc.message, {"status": exc.code.name}) from exc
        return types.ListToolsResult(tools=[_describe(c) for c in found])

    async def _call_tool(self, ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        request_ctx = self._enter(ctx)
        try:
            tool, action = await self._split(params.name)
            call = _tool_call(tool, action, params, ctx.request.headers)
            outcome = await self._invoke_reporting(ctx, call)
        except HarnessError as exc:
            return _tool_error(exc.message, exc.code.name)
        except Exception:
            log.exception(
                "unexpected error in tools/call %s (request %s)", params.name, request_ctx.request_id
            )
            return _tool_error(f"internal error; quote request id {request_ctx.request_id}", "INTERNAL")
        if outcome.result is None:
            return _tool_error(
                f"{params.name} is waiting for approval {outcome.approval_id} and nobody decided in time; "
                "it runs only once approved: call again to ask again",
                "PENDING_APPROVAL",
            )
        meta = {"harness/request_id": outcome.request_id, "harness/cached": outcome.cached}
        if outcome.approval_id:
            meta["harness/approval_id"] = outcome.approval_id
        text = json.dumps(outcome.result, separators=(",", ":"), ensure_ascii=False)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)], structured_content=outcome.result, _meta=meta
        )

    async def _split(self, name: str) -> tuple[str, str]:
        """`tool.action` -> (tool, action). Both may hold dots (an MCP server's tool imported as an
        action is often `ledger.read`): the first prefix that names a catalog tool wins."""
        parts = name.split(".")
        for i in range(1, min(len(parts), 8)):
            tool = ".".join(parts[:i])
            if await self.tools.registry.tool(tool) is not None:
                return tool, ".".join(parts[i:])
        tool, _, action = name.rpartition(".")
        return tool, action

    def _enter(self, ctx) -> reqctx.RequestContext:
        """The request's context (identity included), current for the handler's task."""
        request_ctx = ctx.request.scope[CONTEXT_KEY]
        reqctx.set_current(request_ctx)
        return request_ctx

    async def _invoke_reporting(self, ctx, call: ToolCall) -> ToolOutcome:
        """ToolInvoker.invoke; while it waits (an approval), progress notifications say so."""
        task = asyncio.create_task(self.tools.invoke(call))
        waited = 0.0
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.progress_interval_s)
                if done:
                    return task.result()
                waited += self.progress_interval_s
                with contextlib.suppress(Exception):  # a client that cannot hear progress still waits
                    await ctx.session.report_progress(waited, None, f"still running after {waited:.0f}s")
        finally:
            if not task.done():  # the client left: the call is cancelled (and recorded as such)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


def _replayed(body: bytes, receive):
    """`receive` for the SDK: the body already read, then the client's own messages (disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay():
        return pending.pop() if pending else await receive()

    return replay


def _refusal(status: int, message: str) -> Response:
    """A refusal before the SDK sees the request, as a JSON-RPC error (no request id known yet)."""
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": REFUSED, "message": message}}
    headers = {"allow": "POST"} if status == 405 else None
    return Response(json.dumps(body), status, headers=headers, media_type="application/json")


def _tool_call(tool: str, action: str, params: types.CallToolRequestParams, headers) -> ToolCall:
    idempotency_key = headers.get(IDEMPOTENCY_HEADER, "")
    if not tool or not action:
        raise InvalidArgument(
            f"no tool {params.name!r}: tools are named `tool.action`; tools/list names them"
        )
    arguments: dict[str, Any] = params.arguments or {}
    check_json("the tool's name", params.name)  # a NUL in it would reach the audit record of a denial
    check_json("arguments", arguments)  # what the gRPC path refuses (check_struct, NUL), refused alike
    size = len(json.dumps(arguments, separators=(",", ":")).encode())
    if size > MAX_TOOL_ARGUMENTS_BYTES:
        raise InvalidArgument(
            f"the arguments are {size} bytes as JSON; the limit is {MAX_TOOL_ARGUMENTS_BYTES}"
        )
    if len(idempotency_key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise InvalidArgument(
            f"the {IDEMPOTENCY_HEADER} header is over {MAX_IDEMPOTENCY_KEY_CHARS} characters"
        )
    return ToolCall(
        tool, action, arguments, idempotency_key=idempotency_key, approval_wait_s=_wait_s(headers)
    )


def _wait_s(headers) -> float:
    """How long a call may wait for its approval (0: the router's default), bounded."""
    value = headers.get(APPROVAL_WAIT_HEADER, "")
    if not value:
        return 0.0
    try:
        wait_s = float(value)
    except ValueError:
        wait_s = -1.0
    if not 0 < wait_s <= MAX_APPROVAL_WAIT_S:  # NaN fails this too
        raise InvalidArgument(
            f"{APPROVAL_WAIT_HEADER} must be seconds in (0, {MAX_APPROVAL_WAIT_S:g}], got {value[:32]!r}"
        )
    return wait_s


def _describe(callable_action: CallableAction) -> types.Tool:
    tool, action, risk = callable_action.tool, callable_action.action, callable_action.risk
    approval = "; each call waits for a human approval" if action.requires_approval else ""
    about = " ".join(d for d in (tool.description, action.description) if d)
    return types.Tool(
        name=f"{tool.name}.{action.name}",
        description=f"{about} [{tool.name}@{tool.version} {action.name}: risk {risk}{approval}]".lstrip(),
        # The action's schema from the catalog (calls are checked against it); none: any object.
        input_schema=json.loads(action.input_schema) if action.input_schema else {"type": "object"},
        annotations=types.ToolAnnotations(
            title=f"{tool.name} {action.name}",
            read_only_hint=risk == "read",
            destructive_hint=risk == "delete",
            idempotent_hint=action.idempotent,
            open_world_hint=True,
        ),
        _meta={
            "harness/risk": risk,
            "harness/tool_version": tool.version,
            "harness/requires_approval": action.requires_approval,
        },
    )


def _tool_error(message: str, code: str) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=message)], is_error=True, _meta={"harness/code": code}
    )
