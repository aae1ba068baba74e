"""The one mapping from domain errors to OpenAI's error object and the HTTP statuses OpenAI
clients act on (the SDK picks its exception class by status: 400 BadRequestError, 401
AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError, 429 RateLimitError, 5xx
InternalServerError). The message is the one the gRPC path sends."""

from __future__ import annotations

import json
import math

import grpc

from services.common.errors import HarnessError
from services.router.openai_http.schema import BadRequest

MAX_MESSAGE_CHARS = 1024

# gRPC code -> (HTTP status, OpenAI error type, OpenAI error code)
_BY_CODE: dict[grpc.StatusCode, tuple[int, str, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", "invalid_value"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error", "failed_precondition"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error", "invalid_value"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error", "invalid_api_key"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error", "permission_denied"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error", "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "invalid_request_error", "conflict"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "rate_limit_exceeded"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "invalid_request_error", "unsupported"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable", "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout", "timeout"),
    grpc.StatusCode.CANCELLED: (499, "invalid_request_error", "cancelled"),
}
_INTERNAL = (500, "server_error", "internal_error")


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> bytes:
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 20] + "... (message cut)"
    error = {"message": message, "type": kind, "param": param, "code": code}
    return json.dumps({"error": error}, separators=(",", ":")).encode()


def describe(exc: HarnessError) -> tuple[int, bytes, dict[str, str]]:
    """(HTTP status, JSON body, extra headers) for a domain error."""
    status, kind, code = _BY_CODE.get(exc.code, _INTERNAL)
    param = None
    if isinstance(exc, BadRequest):
        status, param, code = exc.http_status, exc.param, exc.error_code
    headers = {}
    retry_ms = exc.trailers.get("retry-after-ms")
    if retry_ms is not None and retry_ms.isdigit():
        # Retry-After is whole seconds; OpenAI's SDK also reads retry-after-ms.
        headers = {"retry-after": str(max(1, math.ceil(int(retry_ms) / 1000))), "retry-after-ms": retry_ms}
    return status, error_body(exc.message, kind, code, param), headers


def internal(request_id: str) -> tuple[int, bytes]:
    status, kind, code = _INTERNAL
    return status, error_body(f"internal error; quote request id {request_id}", kind, code)
