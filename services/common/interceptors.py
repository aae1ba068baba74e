"""The one server interceptor every Harness service installs.

For each call it: builds the request context (request id, trace, session/step) from metadata,
authenticates the caller, runs the handler with the context in a contextvar, maps domain
errors to gRPC statuses (unexpected errors become INTERNAL with a generic message and a full
server-side log), and observes Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.common import context as reqctx
from services.common.errors import HarnessError, InvalidArgument
from services.common.identity import Authenticator, refuse_bad_headers
from services.common.metric_children import Children

log = logging.getLogger("harness.rpc")

# Infrastructure RPCs that must work without credentials (Envoy health checks, grpcurl list).
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
TRITON_PREFIX = "/inference.GRPCInferenceService/"  # Triton's own protocol: the "triton" front door
MAX_STATUS_CHARS = 1024


class UndecodableRequest:
    """Stands in for a request whose bytes did not parse (truncated, invalid UTF-8 in a string,
    nesting past protobuf's recursion limit). grpc.aio answers UNKNOWN when a deserializer
    raises, so the deserializer returns this instead and the handler wrapper answers
    INVALID_ARGUMENT."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def error(self, method: str) -> InvalidArgument:
        return InvalidArgument(
            f"the request to {method} is not a valid protobuf message ({self.reason}); check the "
            "encoding (strings must be UTF-8 without NUL characters, nesting at most 100 levels)"
        )


def tolerant_deserializer(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(raw: bytes) -> Any:
        try:
            request = deserialize(raw)
        except Exception as exc:  # DecodeError, RecursionError, ...: all mean "bad bytes"
            return UndecodableRequest(type(exc).__name__)
        where = nul_field(request) if isinstance(request, Message) else None
        if where is not None:
            return UndecodableRequest(f"string field {where} holds a NUL character")
        return request

    return parse


def nul_field(message: Message, prefix: str = "") -> str | None:
    """The first string field (path) holding U+0000, which no database stores or compares;
    None when there is none. Only fields that are set are visited."""
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            values = value if field.is_repeated else (value,)
            if any("\x00" in v for v in values):
                return path
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                items = value.items()
                if any(isinstance(k, str) and "\x00" in k for k, _ in items):
                    return path
                children = [v for _, v in items if isinstance(v, (Message, str))]
            else:
                children = list(value) if field.is_repeated else [value]
            for child in children:
                found = ("\x00" in child and path) if isinstance(child, str) else nul_field(child, f"{path}.")
                if found:
                    return found
    return None


def _checked(request: Any, method: str) -> Any:
    if isinstance(request, UndecodableRequest):
        raise request.error(method)
    return request


async def _checked_stream(requests: AsyncIterator[Any], method: str) -> AsyncIterator[Any]:
    async for request in requests:
        yield _checked(request, method)


class RpcMetrics:
    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.requests = Counter(
            "harness_rpc_requests", "RPCs handled", ["service", "method", "code"], registry=registry
        )
        self.duration = Histogram(
            "harness_rpc_duration_seconds",
            "RPC handling time (streams: until the last message)",
            ["service", "method"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.service = service
        self._requests, self._duration = Children(self.requests), Children(self.duration)

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self._requests(self.service, method, code.name).inc()
        self._duration(self.service, method).observe(seconds)


class HarnessServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator, metrics: RpcMetrics) -> None:
        self._auth = authenticator
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(PUBLIC_PREFIXES):
            return handler
        return _wrap(handler, details, self._auth, self._metrics)


async def _enter(
    details: grpc.HandlerCallDetails, context: grpc.aio.ServicerContext, auth: Authenticator
) -> Any:
    md = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
    frontdoor = "triton" if details.method.startswith(TRITON_PREFIX) else "grpc"
    ctx = reqctx.context_from_metadata(details.invocation_metadata or (), frontdoor)
    token = reqctx.set_current(ctx)
    # A response header (initial metadata), so a caller has it before the first message and on
    # any error; the contracts say so.
    await context.send_initial_metadata(((reqctx.REQUEST_ID_KEY, ctx.request_id),))
    refuse_bad_headers(details.invocation_metadata or ())
    identity = await auth.authenticate(context, md)
    reqctx.set_current(dataclasses.replace(ctx, identity=identity))
    return token


async def _fail(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> grpc.StatusCode:
    """Aborts the call with the status for `exc`; returns the code used."""
    if isinstance(exc, HarnessError):
        if exc.trailers:
            context.set_trailing_metadata(tuple(exc.trailers.items()))
        await context.abort(exc.code, _bounded(exc.message))
    log.exception("unexpected error in %s (request %s)", method, reqctx.current().request_id)
    await context.abort(
        grpc.StatusCode.INTERNAL, f"internal error; quote request id {reqctx.current().request_id}"
    )
    raise AssertionError("unreachable")  # abort always raises


def _bounded(message: str) -> str:
    """A status message short enough for HTTP/2 trailers (a message quoting a 1 MB input would
    exceed the peer's header limit and reach it as INTERNAL instead)."""
    if len(message) <= MAX_STATUS_CHARS:
        return message
    return message[: MAX_STATUS_CHARS - 20] + "... (message cut)"


def _code_of(exc: BaseException, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    if isinstance(exc, HarnessError):
        return exc.code
    code = context.code() if hasattr(context, "code") else None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


class _Guard:
    """What every RPC of a service goes through: the request context and identity in, one mapping
    of errors to statuses out, and the RPC's metrics. grpc.aio picks sync vs async handling by
    inspecting the function, so the handlers made here are real coroutine / async-generator
    functions (one layer: a streamed message passes through no extra generator)."""

    def __init__(self, details: grpc.HandlerCallDetails, auth: Authenticator, metrics: RpcMetrics) -> None:
        self.details, self.auth, self.metrics = details, auth, metrics
        self.method = details.method

    def _request(self, request_or_iterator: Any, streamed: bool) -> Any:
        if streamed:
            return _checked_stream(request_or_iterator, self.method)
        return _checked(request_or_iterator, self.method)

    def unary(self, behavior, streamed: bool):
        async def handle(request, context):
            code, start, token = [grpc.StatusCode.OK], time.perf_counter(), None
            try:
                token = await _enter(self.details, context, self.auth)
                return await behavior(self._request(request, streamed), context)
            except (Exception, asyncio.CancelledError) as exc:
                await self._fail(exc, context, code)
            finally:
                self._leave(code[0], start, token)

        return handle

    def streaming(self, behavior, streamed: bool):
        async def handle(request, context):
            code, start, token = [grpc.StatusCode.OK], time.perf_counter(), None
            try:
                token = await _enter(self.details, context, self.auth)
                async for item in behavior(self._request(request, streamed), context):
                    yield item
            except (Exception, asyncio.CancelledError) as exc:
                await self._fail(exc, context, code)
            finally:
                self._leave(code[0], start, token)

        return handle

    async def _fail(self, exc: BaseException, context: grpc.aio.ServicerContext, code: list) -> None:
        """Ends the call for `exc` (always raises); `code` gets the status it ended with."""
        if isinstance(exc, (grpc.aio.AbortError, grpc.RpcError)):  # the handler aborted on its own
            code[0] = _code_of(exc, context)
            raise exc
        if isinstance(exc, asyncio.CancelledError):  # client cancelled or deadline passed
            code[0] = grpc.StatusCode.CANCELLED
            raise exc
        code[0] = exc.code if isinstance(exc, HarnessError) else grpc.StatusCode.INTERNAL
        await _fail(context, exc, self.method)

    def _leave(self, code: grpc.StatusCode, start: float, token: Any) -> None:
        self.metrics.observe(self.method, code, time.perf_counter() - start)
        if token is not None:
            try:
                reqctx.reset_current(token)
            except ValueError:  # a stream closed from another task: its own context is dropped anyway
                pass


def _wrap(
    handler: grpc.RpcMethodHandler,
    details: grpc.HandlerCallDetails,
    auth: Authenticator,
    metrics: RpcMetrics,
) -> grpc.RpcMethodHandler:
    guard = _Guard(details, auth, metrics)

    common = {
        "request_deserializer": tolerant_deserializer(handler.request_deserializer),
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(guard.unary(handler.unary_unary, False), **common)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(guard.unary(handler.stream_unary, True), **common)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(guard.streaming(handler.unary_stream, False), **common)
    return grpc.stream_stream_rpc_method_handler(guard.streaming(handler.stream_stream, True), **common)
