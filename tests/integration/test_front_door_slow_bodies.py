"""A request body slower than its Content-Length is answered 408 in each HTTP front door's own
error shape, on the router's port itself (an agent may reach it past Envoy), and the connection
closes; a body slower than a burst but whole in time is served as usual."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl

import pytest

from services.common import http_server
from services.router.mcp_front import PATH as MCP_PATH
from tests.integration import test_mcp_frontdoor, test_openai_frontdoor
from tests.integration.test_mcp_frontdoor import front as mcp_front  # noqa: F401 (the fixture)
from tests.integration.test_openai_frontdoor import front  # noqa: F401 (the fixture)

pytestmark = pytest.mark.asyncio(loop_scope="module")  # the fixtures live for the module
CHAT = json.dumps({"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
LIST_TOOLS = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/list"})


async def _post(port: int, tls: ssl.SSLContext, path: str, headers: str, body: str, gap_s: float) -> bytes:
    """The answer to a POST whose body's first half comes at once and the rest `gap_s` later
    (never, for None); read until the server closes."""
    reader, writer = await asyncio.open_connection("localhost", port, ssl=tls)
    data, half = body.encode(), len(body) // 2
    head = f"POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: {len(data)}\r\n{headers}\r\n"
    writer.write(head.encode() + data[:half])
    await asyncio.sleep(gap_s)
    writer.write(data[half:] + b"POST /nowhere HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            writer.close()
            await writer.wait_closed()


async def test_openai_a_stalled_body_is_408_an_openai_error_and_a_slow_one_is_served(front, monkeypatch):  # noqa: F811
    assert isinstance(front, test_openai_frontdoor.Front)
    monkeypatch.setattr(http_server, "BODY_TIMEOUT_S", 0.5)
    headers = f"authorization: Bearer {front.token}\r\ncontent-type: application/json\r\n"
    late = await _post(front.http.port, front.tls(), "/v1/chat/completions", headers, CHAT, 1.0)
    slow = await _post(front.http.port, front.tls(), "/v1/chat/completions", headers, CHAT, 0.2)
    status, _, body = late.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 408 ") and b"connection: close" in status, late[:300]
    assert json.loads(body)["error"] == {
        "message": "the request body did not arrive within 0.5 s",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_timeout",
    }
    assert slow.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 404 " in slow, slow[:300]  # and the next request


async def test_mcp_a_stalled_body_is_408_a_json_rpc_error_and_a_slow_one_is_served(mcp_front, monkeypatch):  # noqa: F811
    assert isinstance(mcp_front, test_mcp_frontdoor.Front)
    monkeypatch.setattr(http_server, "BODY_TIMEOUT_S", 0.5)
    headers = (
        f"authorization: Bearer {mcp_front.tokens['alice']}\r\ncontent-type: application/json\r\n"
        "accept: application/json, text/event-stream\r\n"
    )
    tls = mcp_front.tls("rpa")
    late = await _post(mcp_front.http.port, tls, MCP_PATH, headers, LIST_TOOLS, 1.0)
    slow = await _post(mcp_front.http.port, tls, MCP_PATH, headers, LIST_TOOLS, 0.2)
    status, _, body = late.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 408 ") and b"connection: close" in status, late[:300]
    assert json.loads(body) == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32600, "message": "the request body did not arrive within 0.5 s"},
    }
    assert slow.startswith(b"HTTP/1.1 200 ") and b'"tools"' in slow, slow[:300]
