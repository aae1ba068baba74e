"""The OpenAI HTTP API as a thin front door onto the router's Generate path.

Each request: context from the headers (x-request-id, x-harness-session-id/step-id,
traceparent) -> identity exactly as on gRPC (agent from Envoy's XFCC on connections whose peer
certificate is Envoy's; user from `Authorization: Bearer <JWT or API key>`) -> the request body
parsed into the same GenerationInput the gRPC servicer builds -> Router.generate -> text deltas
rendered as OpenAI JSON or server-sent events. Domain errors become OpenAI error objects (one
mapping, errors.py); anything else is a 500 with a generic message and a server-side log.

The call's records are in the outbox before the answer's last byte; what the caller need not
wait for (budget and rate-limit settles, metrics: the stages' release hooks) runs after it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from services.common import context as reqctx
from services.common.errors import HarnessError, NotFound
from services.common.http_server import PEER_IDS_KEY, TLS_KEY, BodyTimedOut
from services.common.identity import Authenticator, refuse_bad_headers
from services.router import chunk_interval
from services.router.call import AfterAnswer
from services.router.chat import Piece, ToolCallStream, ToolSpec, assemble
from services.router.chat.templates import offered
from services.router.core import Call, Chunk, EmbeddingInput, GenerationInput, Router
from services.router.openai_http import embeddings, errors, schema, wire
from services.router.openai_http.sse import EventStream

log = logging.getLogger("harness.router.openai")
FRONTDOOR = "openai"
MAX_BODY_BYTES = 4 * 1024 * 1024  # a 1M-character prompt (the router's limit) fits, JSON-escaped
DRAIN_LIMIT_BYTES = 2 * MAX_BODY_BYTES  # read and dropped at most, to answer an oversized body
JSON = "application/json"
AFTER_ANSWER_KEY = "harness.after_answer"  # scope: work to run once the response's last byte is sent
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/healthz", "/mcp")

Handler = Callable[[Request], Awaitable[Response]]


class BodyTooLarge(schema.BadRequest):
    http_status = 413


class BodyTooSlow(schema.BadRequest):
    http_status = 408


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "harness_http_requests",
            "HTTP front door requests by route and status",
            ["frontdoor", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "harness_http_request_duration_seconds",
            "HTTP handling time (streams: until the last event)",
            ["frontdoor", "route"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}  # bounded: routes x statuses

    def observe(self, route: str, status: int, seconds: float) -> None:
        children = self._children.get((route, status))
        if children is None:  # a label lookup takes a lock and builds a tuple: once per pair
            children = (
                self.requests.labels(FRONTDOOR, route, str(status)),
                self.duration.labels(FRONTDOOR, route),
            )
            self._children[(route, status)] = children
        children[0].inc()
        children[1].observe(seconds)


def _route(path: str) -> str:
    """A bounded label: the route template, never the caller's path."""
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    return path if path in ROUTES else "other"


class OpenAIFrontDoor:
    def __init__(self, router: Router, auth: Authenticator, metrics: CollectorRegistry | None = None) -> None:
        self.router = router
        self.auth = auth
        self.metrics = HttpMetrics(metrics or CollectorRegistry())
        self.serving = True  # False once the service stops: Envoy's health check takes it out
        self.ready: Callable[[], bool] = lambda: True  # False while the router cannot answer yet

    def app(self, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
        """The API's routes, and `extra_routes` (other front doors on the same port: /mcp)."""
        posts = {
            "/v1/chat/completions": self._entry(self.chat),
            "/v1/completions": self._entry(self.completions),
            "/v1/embeddings": self._entry(self.embeddings),
        }
        routes = [
            *(Route(path, handler, methods=["POST"]) for path, handler in posts.items()),
            Route("/v1/models", self._entry(self.list_models), methods=["GET"]),
            Route("/v1/models/{model_id:path}", self._entry(self.get_model), methods=["GET"]),
            Route("/healthz", self.health, methods=["GET"]),
            *extra_routes,
        ]
        app = Starlette(routes=routes, exception_handlers={HTTPException: self._http_error})
        return _Observed(app, self.metrics, posts)

    # --- the per-request entry (what the gRPC interceptor does for gRPC) ----------------------
    def _entry(self, handler: Handler) -> Handler:
        async def entry(request: Request) -> Response:
            # No reset afterwards: each request runs in its own task, and a stream's events
            # are produced after this returns, still under this request's context.
            headers = request.headers.items()  # decoded once: Starlette decodes on each call
            ctx = reqctx.context_from_metadata(headers, FRONTDOOR)
            reqctx.set_current(ctx)
            try:
                scope = request.scope
                refuse_bad_headers(headers)
                identity = await self.auth.authenticate_peer(
                    scope.get(PEER_IDS_KEY, ()), scope.get(TLS_KEY, False), request.headers
                )
                reqctx.set_current(dataclasses.replace(ctx, identity=identity))
                response = await handler(request)
            except HarnessError as exc:
                response = _error(exc)
            except Exception:
                log.exception("unexpected error in %s (request %s)", request.url.path, ctx.request_id)
                status, body = errors.internal(ctx.request_id)
                response = Response(body, status, media_type=JSON)
            response.headers[reqctx.REQUEST_ID_KEY] = ctx.request_id
            return response

        return entry

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = f"no such endpoint: {request.method} {request.url.path}"
        body = errors.error_body(message, "invalid_request_error", None)
        return Response(body, exc.status_code, media_type=JSON)

    async def health(self, request: Request) -> Response:
        if not self.serving:
            return Response(b"stopping", 503)
        if not self.ready():  # e.g. no registry copy yet: every call would fail
            return Response(b"no registry copy yet", 503)
        return Response(b"ok", 200)

    # --- models ------------------------------------------------------------------------------
    async def list_models(self, request: Request) -> Response:
        models = await self.router.allowed_models()
        data = [wire.model_object(m.name) for m in models]
        return Response(wire.dumps({"object": "list", "data": data}), media_type=JSON)

    async def get_model(self, request: Request) -> Response:
        model = await self._model(request.path_params["model_id"])
        return Response(wire.dumps(wire.model_object(model)), media_type=JSON)

    async def _model(self, name: str) -> str:
        """The catalog name of a model the calling agent may use (by catalog or Triton name)."""
        model = await self.router.allowed_model(name)
        if model is not None:
            return model.name
        agent = reqctx.current().identity.agent
        raise NotFound(
            f"The model {name!r} does not exist or agent {agent!r} may not use it; "
            "GET /v1/models lists the models it may use"
        )

    # --- generation --------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        interval_ms = _interval_ms(request)
        req = schema.parse(schema.ChatCompletionRequest, await _body(request))
        max_calls = 1 if req.parallel_tool_calls is False else 0  # false: the first call only
        inp = schema.chat_input(req, interval_ms if req.stream else 0)
        return await self._generate(_call(inp, request), wire.ChatShape, req, max_calls)

    async def completions(self, request: Request) -> Response:
        interval_ms = _interval_ms(request)
        req = schema.parse(schema.CompletionRequest, await _body(request))
        inp = schema.completion_input(req, interval_ms if req.stream else 0)
        return await self._generate(_call(inp, request), wire.TextShape, req)

    async def embeddings(self, request: Request) -> Response:
        req = schema.parse(embeddings.EmbeddingRequest, await _body(request))
        inp = embeddings.embedding_input(req)
        await self._model(inp.model)
        call = _call(inp, request)
        await self.router.embed(call)
        headers = {"x-harness-deployment": call.deployment} if call.deployment else {}
        return Response(embeddings.response_body(call, req.encoding_format), media_type=JSON, headers=headers)

    async def _generate(
        self, call: Call, shape: type[wire.Shape], req: schema.Sampling, max_calls: int = 0
    ) -> Response:
        inp = call.inp
        assert isinstance(inp, GenerationInput)
        await self._model(inp.model)
        texts = _texts(self.router.run(call))
        tools = offered(inp.tools, inp.tool_choice)
        pieces = _split_tool_calls(texts, call, tools, max_calls) if tools else texts
        if not req.stream:
            answer = assemble([piece async for piece in pieces])
            body = shape(call.request_id, call.model).whole(answer.content, call, answer.tool_calls)
            return Response(body, media_type=JSON, headers=_call_headers(call))
        # The first piece before the headers: an error before any text (policy, limits, no
        # endpoint) still gets its own HTTP status, as OpenAI answers them.
        try:
            first: Piece | None = await anext(pieces)
        except StopAsyncIteration:
            first = None
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        events = _events(shape(call.request_id, call.model, include_usage), first, pieces, call)
        headers = {**_call_headers(call), "cache-control": "no-cache", "x-accel-buffering": "no"}
        return EventStream(events, media_type="text/event-stream", headers=headers)


def _call(inp: GenerationInput | EmbeddingInput, request: Request) -> Call:
    """A call whose release hooks run after the response's last byte (see _Observed)."""
    return Call(inp, after_answer=request.scope.get(AFTER_ANSWER_KEY))


def _interval_ms(request: Request) -> int:
    """The minimum interval between streamed chunks the request asks for (a whole answer has
    one chunk, so only streams use it)."""
    value = request.headers.get(chunk_interval.HEADER)
    return 0 if value is None else chunk_interval.parse_interval_ms(value)


async def _events(
    shape: wire.Shape, first: Piece | None, pieces: AsyncIterator[Piece], call: Call
) -> AsyncIterator[bytes]:
    called = False  # a tool call went out: the answer finishes with "tool_calls"
    try:
        # The opening event (chat's role) goes out with the first piece, already here: one
        # write instead of two (text completions have none: no empty body message either).
        opening = shape.start()
        if first is None:
            yield opening + shape.end(call, called)
            return
        called = not isinstance(first, str)
        yield opening + (shape.delta(first) if isinstance(first, str) else shape.tool_call(first))
        async for piece in pieces:
            if isinstance(piece, str):
                yield shape.delta(piece)
            else:
                called = True
                yield shape.tool_call(piece)
        yield shape.end(call, called)
    except HarnessError as exc:
        yield wire.error_event(errors.describe(exc)[1])
    except Exception:
        request_id = reqctx.current().request_id
        log.exception("unexpected error while streaming (request %s)", request_id)
        yield wire.error_event(errors.internal(request_id)[1])
    finally:
        await pieces.aclose()  # a client that left cancels the generation (recorded as such)


async def _texts(chunks: AsyncIterator[Chunk]) -> AsyncIterator[str]:
    """The pipeline's chunks as text deltas (closing this closes the pipeline's stream)."""
    async with aclosing(chunks):
        async for chunk in chunks:
            if chunk.text:
                yield chunk.text


async def _split_tool_calls(
    texts: AsyncIterator[str], call: Call, tools: Sequence[ToolSpec], max_calls: int
) -> AsyncIterator[Piece]:
    """Text deltas with the model's tool calls read out as they are written, in the model
    family's format (its template is known once the call was validated)."""
    reader: ToolCallStream | None = None
    async with aclosing(texts):
        async for text in texts:
            reader = reader or ToolCallStream(call.template, tools, max_calls)
            for piece in reader.feed(text):
                yield piece
    for piece in reader.finish() if reader is not None else ():
        yield piece


def _call_headers(call: Call) -> dict[str, str]:
    headers = {"x-harness-cache": call.cached or "miss"}
    if call.deployment:
        headers["x-harness-deployment"] = call.deployment
    return headers


def _error(exc: HarnessError) -> Response:
    status, body, headers = errors.describe(exc)
    return Response(body, status, media_type=JSON, headers=headers)


async def _body(request: Request) -> bytes:
    """The request body, refused past MAX_BODY_BYTES, or when it does not all arrive within the
    server's BODY_TIMEOUT_S (408; the server closes the connection after the answer)."""
    try:
        return await _bounded_body(request)
    except BodyTimedOut as exc:
        raise BodyTooSlow(exc.message, None, "request_timeout") from None


async def _bounded_body(request: Request) -> bytes:
    """The request body, refused past MAX_BODY_BYTES. An oversized body is read on (and dropped)
    up to DRAIN_LIMIT_BYTES before the 413: a client still sending when the answer came and the
    connection closed would otherwise see the connection reset instead of the answer."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        if int(declared) <= DRAIN_LIMIT_BYTES:
            await _drain(request.stream(), 0)
        raise BodyTooLarge(f"the request body is {declared} bytes; the limit is {MAX_BODY_BYTES}")
    parts, size = [], 0
    chunks = request.stream()
    async for chunk in chunks:
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            await _drain(chunks, size)
            raise BodyTooLarge(f"the request body is over the limit of {MAX_BODY_BYTES} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def _drain(chunks: AsyncIterator[bytes], size: int) -> None:
    async for chunk in chunks:
        size += len(chunk)
        if size > DRAIN_LIMIT_BYTES:
            return


class _Observed:
    """Counts each request by route and status, timed until its last byte was sent, then runs
    what its call left for after the answer (AFTER_ANSWER_KEY).

    The POST endpoints are called directly, past Starlette's routing and its two exception
    middlewares: their entry already turns every exception into a response, and the layers
    cost a wrapper call per streamed event. Everything else goes through Starlette."""

    def __init__(self, app: Starlette, metrics: HttpMetrics, posts: dict[str, Handler]) -> None:
        self.app = app
        self.metrics = metrics
        self.posts = posts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]
        handler = self.posts.get(scope["path"]) if scope["method"] == "POST" else None
        after = AfterAnswer()
        scope[AFTER_ANSWER_KEY] = after
        try:
            if handler is not None and not scope.get("root_path"):
                response = await handler(Request(scope, receive))
                status[0] = response.status_code
                await response(scope, receive, send)
                return

            async def observed_send(message) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            await self.app(scope, receive, observed_send)
        finally:
            self.metrics.observe(_route(scope["path"]), status[0], time.perf_counter() - start)
            await _after_answer(after)


async def _after_answer(after: AfterAnswer) -> None:
    """Runs what the call left for after the answer, even if cancelled meanwhile."""
    try:
        if after.pending:
            # The last bytes were only queued (the server coalesces a turn's writes and sends
            # them at the end of the turn): one turn lets them go out first.
            await asyncio.sleep(0)
    finally:
        await after.run()
