"""A ledger tool that is an MCP server, built with the official `mcp` SDK (streamable HTTP,
served by uvicorn on a free port): `ledger.read` (read-only), `ledger.delete` (destructive) and
`ledger.hang` (never answers: a server that hangs). With `token`, it answers only requests that
carry `authorization: Bearer <token>` (an upstream that needs a credential), else 401."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.common.config import TlsFiles
from services.common.http_server import HttpServer, start_http_server

TOOLS = [
    types.Tool(
        name="ledger.read",
        description="Read a ledger's balance",
        input_schema={"type": "object", "properties": {"ledger": {"type": "string"}}, "required": ["ledger"]},
        annotations=types.ToolAnnotations(read_only_hint=True, idempotent_hint=True),
    ),
    types.Tool(
        name="ledger.delete",
        description="Delete a ledger",
        input_schema={"type": "object", "properties": {"ledger": {"type": "string"}}},
        annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=True),
    ),
    types.Tool(name="ledger.hang", description="Never answers", input_schema={"type": "object"}),
]


@dataclass
class McpLedger:
    calls: list[tuple[str, dict]] = field(default_factory=list)
    token: str = ""
    refused: int = 0  # requests without the token
    http: HttpServer | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task | None = None

    @property
    def endpoint(self) -> str:
        assert self.http is not None
        return f"mcp+http://127.0.0.1:{self.http.port}/mcp"

    async def _list(self, ctx, params) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS)

    async def _call(self, ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        args = dict(params.arguments or {})
        self.calls.append((params.name, args))
        if params.name == "ledger.hang":
            await asyncio.Event().wait()
        if params.name == "ledger.read":
            answer = {"ledger": args.get("ledger"), "balance": 1200, "owner_phone": "13812345678"}
        elif params.name == "ledger.delete":
            answer = {"deleted": args.get("ledger")}
        else:
            return types.CallToolResult(
                content=[types.TextContent(type="text", text="no such tool")], is_error=True
            )
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=str(answer))], structured_content=answer
        )

    async def start(self) -> McpLedger:
        server = Server("ledger", on_list_tools=self._list, on_call_tool=self._call)
        sessions = StreamableHTTPSessionManager(server, stateless=True)
        started = asyncio.Event()

        async def run() -> None:
            async with sessions.run():
                started.set()
                await self._stop.wait()

        self._task = asyncio.create_task(run())
        await started.wait()
        app = Starlette(routes=[Route("/mcp", _Guarded(self, StreamableHTTPASGIApp(sessions)))])
        self.http = await start_http_server(app, "127.0.0.1", 0, TlsFiles())
        return self

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.stop(0.5)
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


class _Guarded:
    """The MCP app behind a bearer-token check (an ASGI app, as Starlette's Route takes one)."""

    def __init__(self, ledger: McpLedger, app) -> None:
        self.ledger, self.app = ledger, app

    async def __call__(self, scope, receive, send) -> None:
        token = self.ledger.token
        if token and Request(scope).headers.get("authorization") != f"Bearer {token}":
            self.ledger.refused += 1
            await Response("a bearer token is required", 401)(scope, receive, send)
            return
        await self.app(scope, receive, send)
