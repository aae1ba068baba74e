"""The shape of a request body on the MCP front door, checked before the SDK parses it.

The SDK answers a body that is not one JSON-RPC request with a pydantic dump (four validation
errors of a union, with documentation links) as -32602, a tools/call whose `name` or `arguments`
has the wrong type with a bare "Invalid request parameters", and a body over its limit or not
declared JSON in plain text (413, 400). Here each is a JSON-RPC error naming what is wrong:
-32600 for a body that is not one request (MCP 2025-06-18 has no batches), -32602 naming the
parameter, 408, 413 and 415 as JSON-RPC too. Anything else goes to the SDK unchanged, byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

from services.common.http_server import BodyTimedOut

INVALID_REQUEST, INVALID_PARAMS = -32600, -32602


class BadMcpRequest(Exception):
    def __init__(self, status: int, code: int, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.request_id = status, code, message, request_id

    def body(self) -> bytes:
        error = {"code": self.code, "message": self.message}
        return json.dumps({"jsonrpc": "2.0", "id": self.request_id, "error": error}).encode()


def check_content_type(value: str) -> None:
    """BadMcpRequest (415) unless the body is declared JSON (the SDK answers in plain text)."""
    if value.split(";", 1)[0].strip().lower() != "application/json":
        shown = value[:64] or "none"
        raise BadMcpRequest(415, INVALID_REQUEST, f"content-type must be application/json, got {shown}")


async def read_body(receive, declared: str, limit: int) -> bytes:
    """The request body, BadMcpRequest past `limit` bytes (413) or when it does not all arrive
    within the server's BODY_TIMEOUT_S (408; the server closes the connection after the answer)."""
    try:
        return await _bounded_body(receive, declared, limit)
    except BodyTimedOut as exc:
        raise BadMcpRequest(408, INVALID_REQUEST, exc.message) from None


async def _bounded_body(receive, declared: str, limit: int) -> bytes:
    if declared.isdigit() and int(declared) > limit:
        raise BadMcpRequest(
            413, INVALID_REQUEST, f"the request body is {declared} bytes; the limit is {limit}"
        )
    parts, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # the client left
            break
        parts.append(message.get("body", b""))
        size += len(parts[-1])
        if size > limit:
            raise BadMcpRequest(413, INVALID_REQUEST, f"the request body is over the limit of {limit} bytes")
        more = message.get("more_body", False)
    return b"".join(parts)


def check_request(body: bytes) -> None:
    """BadMcpRequest for a body that parses as JSON but is not one well-formed JSON-RPC request
    (bodies that do not parse are left to the SDK's own -32700)."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return
    if isinstance(message, list):
        raise BadMcpRequest(
            400, INVALID_REQUEST, "batches are not supported: send one JSON-RPC message per POST"
        )
    if not isinstance(message, dict):
        raise BadMcpRequest(400, INVALID_REQUEST, "the body must be one JSON-RPC message: a JSON object")
    request_id = message.get("id")
    if request_id is not None and (not isinstance(request_id, str | int) or isinstance(request_id, bool)):
        raise BadMcpRequest(400, INVALID_REQUEST, "'id' must be a string or an integer")
    if message.get("jsonrpc") != "2.0":
        raise BadMcpRequest(400, INVALID_REQUEST, "'jsonrpc' must be \"2.0\"", request_id)
    params = message.get("params")
    if params is not None and not isinstance(params, dict):
        raise BadMcpRequest(400, INVALID_PARAMS, "'params' must be an object", request_id)
    if message.get("method") == "tools/call":
        _check_tool_call(params or {}, request_id)


def _check_tool_call(params: dict[str, Any], request_id: Any) -> None:
    if not isinstance(params.get("name"), str):
        raise BadMcpRequest(
            400, INVALID_PARAMS, "tools/call: 'params.name' must be a string (tool.action, as tools/list names it)",
            request_id,
        )  # fmt: skip
    arguments = params.get("arguments")
    if arguments is not None and not isinstance(arguments, dict):
        raise BadMcpRequest(
            400, INVALID_PARAMS, f"tools/call: 'params.arguments' must be an object, got {_json_type(arguments)}",
            request_id,
        )  # fmt: skip


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    kinds = ((int, "a number"), (float, "a number"), (str, "a string"), (list, "an array"))
    return next((name for kind, name in kinds if isinstance(value, kind)), "an object")
