"""Calling an MCP server (streamable HTTP) with the official `mcp` SDK client: a tool's endpoint
when the catalog names one as `mcp+http://` or `mcp+https://`, and `harness tools import-mcp`.

Every call is bounded: the whole exchange (connect, initialize, the request) by `timeout_s`, an
answer by `max_bytes`; a server that hangs costs the caller its deadline, nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import mcp_types as types
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from services.common.errors import DeadlineExceeded, InvalidArgument, Unavailable

SCHEMES = ("mcp+http://", "mcp+https://")
MAX_LISTED_TOOLS = 64  # what one catalog tool can hold as actions
MAX_DESCRIPTION_CHARS = 1024  # an action's description in the catalog
DEFAULT_CREDENTIAL_HEADER = "authorization"  # where a tool's credential goes (Tool.credential_header)


def is_mcp_endpoint(endpoint: str) -> bool:
    return endpoint.startswith(SCHEMES)


def http_url(endpoint: str) -> str:
    """The server's HTTP URL: `mcp+https://host/mcp` -> `https://host/mcp` (a plain URL stays)."""
    return endpoint.removeprefix("mcp+")


@contextlib.asynccontextmanager
async def _session(
    url: str, timeout_s: float, max_bytes: int, headers: dict[str, str] | None, failures: list[int]
) -> AsyncIterator[ClientSession]:
    async def note(response: httpx2.Response) -> None:  # the SDK's error hides the HTTP status
        if response.status_code >= 400:
            failures.append(response.status_code)

    http = httpx2.AsyncClient(timeout=timeout_s, headers=headers or {}, event_hooks={"response": [note]})
    async with http, streamable_http_client(url, http_client=http, max_sse_event_size=max_bytes) as streams:
        async with ClientSession(*streams) as session:
            await session.initialize()
            yield session


async def _bounded(url: str, timeout_s: float, work, failures: list[int]) -> Any:
    try:
        async with asyncio.timeout(timeout_s):
            return await work()
    except TimeoutError as exc:
        raise DeadlineExceeded(f"the MCP server at {url} did not answer within {timeout_s:g}s") from exc
    except (InvalidArgument, Unavailable, DeadlineExceeded):
        raise
    except Exception as exc:  # connection refused, TLS, HTTP status, protocol errors (in a group)
        status = f" (HTTP {failures[-1]})" if failures else ""
        hint = ""
        if failures and failures[-1] in (401, 403):
            hint = "; it refused the credentials: give the tool a credential (`harness secrets set`)"
        raise Unavailable(f"the MCP server at {url} failed{status}: {_reason(exc)}{hint}") from exc


def _reason(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:300]


async def call_tool(
    endpoint: str,
    name: str,
    arguments: dict[str, Any],
    timeout_s: float,
    max_bytes: int,
    headers: dict[str, str] | None = None,
) -> dict:
    """The tool's answer as a JSON object: its structured content, else {"content": text}.
    A tool error is InvalidArgument in the server's words. `headers` go with every request (a
    tool's upstream credential)."""
    url, failures = http_url(endpoint), []

    async def work() -> types.CallToolResult:
        async with _session(url, timeout_s, max_bytes, headers, failures) as session:
            return await session.call_tool(name, arguments)

    result: types.CallToolResult = await _bounded(url, timeout_s, work, failures)
    text = " ".join(c.text for c in result.content if isinstance(c, types.TextContent))
    if result.is_error:
        raise InvalidArgument(f"the tool refused the call: {text[:300]}")
    answer = result.structured_content if result.structured_content is not None else {"content": text}
    if len(json.dumps(answer, separators=(",", ":")).encode()) > max_bytes:
        raise Unavailable(f"the MCP server at {url} answered more than {max_bytes} bytes (the limit)")
    return dict(answer)


async def list_tools(
    endpoint: str, timeout_s: float, max_bytes: int = 4 * 1024 * 1024, headers: dict[str, str] | None = None
) -> list[types.Tool]:
    """The server's tools (first pages, at most MAX_LISTED_TOOLS)."""
    url, failures = http_url(endpoint), []

    async def work() -> list[types.Tool]:
        async with _session(url, timeout_s, max_bytes, headers, failures) as session:
            tools: list[types.Tool] = []
            cursor = None
            while len(tools) <= MAX_LISTED_TOOLS:
                params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
                page = await session.list_tools(params=params)
                tools.extend(page.tools)
                cursor = page.next_cursor
                if not cursor:
                    break
            return tools

    tools = await _bounded(url, timeout_s, work, failures)
    if len(tools) > MAX_LISTED_TOOLS:
        raise InvalidArgument(
            f"the MCP server at {url} lists more than {MAX_LISTED_TOOLS} tools (a tool's limit)"
        )
    return tools


def catalog_actions(tools: list[types.Tool]) -> list[registry_pb2.ToolAction]:
    """An MCP server's tools as catalog actions, named as the server names them: a tool the server
    marks read-only is a `read`; anything else a `write` that a human approves on each call (the
    safe default; an admin may change either)."""
    actions = []
    for tool in tools:
        hints = tool.annotations
        action = registry_pb2.ToolAction(
            name=tool.name,
            description=(tool.description or "")[:MAX_DESCRIPTION_CHARS],
            input_schema=json.dumps(tool.input_schema, separators=(",", ":")) if tool.input_schema else "",
        )
        if hints is not None and hints.read_only_hint:
            action.risk, action.idempotent = common_pb2.RISK_CLASS_READ, bool(hints.idempotent_hint)
        else:
            action.risk, action.requires_approval = common_pb2.RISK_CLASS_WRITE, True
        actions.append(action)
    return actions
