"""Envoy's external processing API (`envoy.service.ext_proc.v3.ExternalProcessor`) on the router:
a front door like the others, except that Envoy, not the router, carries the tokens.

One ext_proc stream is one HTTP request (a Triton `ModelStreamInfer` call). Envoy sends the
request headers and, in FULL_DUPLEX_STREAMED mode, the body as it arrives without waiting. Once
the first gRPC message is complete the call runs the pipeline (`Router.relay`): identity from
the headers (XFCC is trusted only because this connection's peer is Envoy), policy, redaction,
admission, budgets, and the endpoint. The answer to Envoy is the endpoint in
`x-gateway-destination-endpoint` (an ORIGINAL_DST cluster connects to it) and the request
rewritten for the engine (its model name, the redacted prompt); a refusal is an immediate gRPC
status. The response body comes back when Envoy is configured to stream it here (exact token
counts, one message per chunk) or not at all (only the trailers: usage is then estimated at
`max_tokens`, an upper bound); the call settles and is recorded when the response ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from envoy.type.v3 import http_status_pb2
from tritonclient.grpc import service_pb2 as pb

from services.common import context as reqctx
from services.common import triton_tensors as tensors
from services.common.errors import HarnessError, InvalidArgument, PermissionDenied, ResourceExhausted
from services.common.identity import XFCC_KEY, Authenticator, peer_spiffe_ids, refuse_bad_headers
from services.router.core import Call, Router
from services.router.engine import EngineChunk
from services.router.extproc.wire import Frames, frame, replace_text
from services.router.stages.relay import RelayLink, unavailable
from services.router.triton import build_request, parse_response
from services.router.triton_facade import FacadeModel, generation_input

log = logging.getLogger("harness.router.extproc")
DESTINATION_HEADER = "x-gateway-destination-endpoint"
STREAM_INFER_PATH = "/inference.GRPCInferenceService/ModelStreamInfer"
FRONTDOOR = "extproc"
# Credentials stay at the Harness: the engine never sees the caller's token or certificate.
STRIPPED_HEADERS = ("authorization", "x-api-key", XFCC_KEY)
MAX_REQUEST_BYTES = 4 << 20


class ExtProcServicer(ep_grpc.ExternalProcessorServicer):
    def __init__(self, router: Router, authenticator: Callable[[], Authenticator | None]) -> None:
        self._router = router
        self._authenticator = authenticator
        self._background: set[asyncio.Task] = set()

    async def Process(
        self, request_iterator: AsyncIterator[ep.ProcessingRequest], context: Any
    ) -> AsyncIterator[ep.ProcessingResponse]:
        md = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        if XFCC_KEY in md:  # a client's call proxied by Envoy, not Envoy's own ext_proc call
            raise PermissionDenied("the ext_proc API is for Envoy's external processing filter only")
        auth, peer_ids = self._authenticator(), peer_spiffe_ids(context)
        if auth is None or not auth.is_proxy(peer_ids, bool(peer_ids)):
            raise PermissionDenied("the ext_proc API answers Envoy's certificate only")
        exchange = _Exchange(self._router, auth, peer_ids)
        try:
            async for message in request_iterator:
                for response in await exchange.handle(message):
                    yield response
        finally:
            task = exchange.end()
            if task is not None and not task.done():
                self._background.add(task)  # the completion hooks settle and record it
                task.add_done_callback(self._background.discard)


class _Exchange:
    """One HTTP request's ext_proc conversation."""

    def __init__(self, router: Router, auth: Authenticator, peer_ids: tuple[str, ...]) -> None:
        self.router, self.auth, self.peer_ids = router, auth, peer_ids
        self.header_list: list[tuple[str, str]] = []  # as sent: a header may come twice
        self.headers: dict[str, str] = {}
        self.request_bytes = bytearray()
        self.responses = Frames(pb.ModelStreamInferResponse)
        self.call: Call | None = None
        self.link: RelayLink | None = None
        self.task: asyncio.Task | None = None
        self.final_seen = False
        self.sees_output = False

    async def handle(self, message: ep.ProcessingRequest) -> list[ep.ProcessingResponse]:
        kind = message.WhichOneof("request")
        try:
            if kind == "request_headers":
                mode = message.protocol_config.response_body_mode
                self.sees_output = mode == processing_mode_pb2.ProcessingMode.STREAMED
                self.header_list = _header_pairs(message.request_headers.headers)
                self.headers = dict(self.header_list)
                return []  # answered with the body: the endpoint depends on it
            if kind == "request_body":
                return await self._request_body(message.request_body)
            if kind == "request_trailers":
                return [ep.ProcessingResponse(request_trailers=ep.TrailersResponse())]
            if kind == "response_body":
                return await self._response_body(message.response_body)
            if kind == "response_trailers":
                self._response_end(dict(_header_pairs(message.response_trailers.trailers)))
                return [ep.ProcessingResponse(response_trailers=ep.TrailersResponse())]
            if kind == "response_headers":
                return [ep.ProcessingResponse(response_headers=ep.HeadersResponse())]
        except HarnessError as exc:
            return [_refusal(exc)]
        return []

    async def _request_body(self, body: ep.HttpBody) -> list[ep.ProcessingResponse]:
        if self.call is not None:  # the call's one request already went upstream
            if body.body:
                raise InvalidArgument(
                    "the ext_proc path takes one request per ModelStreamInfer stream; "
                    "open a new stream for the next request"
                )
            return [_body(b"", body.end_of_stream)]
        self.request_bytes += body.body
        if len(self.request_bytes) > MAX_REQUEST_BYTES + 5:
            raise ResourceExhausted(f"the request is larger than {MAX_REQUEST_BYTES} bytes")
        frames = Frames(pb.ModelInferRequest)
        messages = frames.feed(bytes(self.request_bytes))
        if not messages:
            if body.end_of_stream:
                raise InvalidArgument("the stream ended before a whole ModelInferRequest arrived")
            return []
        if len(messages) > 1 or frames.pending:
            raise InvalidArgument("the ext_proc path takes one request per ModelStreamInfer stream")
        upstream = await self._start(messages[0])
        headers = ep.HeaderMutation(
            set_headers=[_header(DESTINATION_HEADER, self.call.endpoint.address)],  # type: ignore[union-attr]
            remove_headers=list(STRIPPED_HEADERS),
        )
        return [
            ep.ProcessingResponse(
                request_headers=ep.HeadersResponse(response=ep.CommonResponse(header_mutation=headers))
            ),
            _body(frame(upstream), body.end_of_stream),
        ]

    async def _start(self, request: pb.ModelInferRequest) -> pb.ModelInferRequest:
        """Runs the call's stages up to the endpoint pick; the request the engine gets."""
        if self.headers.get(":path") != STREAM_INFER_PATH:
            raise InvalidArgument(f"the ext_proc path serves {STREAM_INFER_PATH} only")
        ctx = reqctx.context_from_metadata(self.headers.items(), FRONTDOOR)
        reqctx.set_current(ctx)
        refuse_bad_headers(self.header_list)
        identity = await self.auth.authenticate_peer(self.peer_ids, bool(self.peer_ids), self.headers)
        reqctx.set_current(dataclasses.replace(ctx, identity=identity))
        try:
            values = tensors.decode_inputs(request, FacadeModel(request.model_name))
        except tensors.TensorError as exc:
            raise InvalidArgument(str(exc)) from exc
        inp = generation_input(request.model_name, values)
        if not inp.prompt:
            raise InvalidArgument("text_input is empty: send the prompt in text_input")
        self.call, self.link = Call(inp), RelayLink(sees_output=self.sees_output)
        self.call.relay = self.link
        self.task = asyncio.create_task(self._drain(self.call))  # runs in a copy of this context
        await asyncio.wait({self.link.picked, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if not self.link.picked.done():
            raise self.task.exception() or InvalidArgument("the call ended before an endpoint was picked")
        stream = bool(tensors.scalar(values, "stream", True))
        engine = dataclasses.replace(self.call.engine_request(), request_id=request.id, stream=stream)
        return build_request(engine)

    async def _drain(self, call: Call) -> None:
        async for _ in self.router.relay(call):
            pass

    async def _response_body(self, body: ep.HttpBody) -> list[ep.ProcessingResponse]:
        """Counts and redacts each engine response; only whole messages go on (a partial one
        waits here for its rest, so no unredacted byte reaches the caller)."""
        if self.link is None or self.call is None:
            return [ep.ProcessingResponse(response_body=ep.BodyResponse())]
        out = bytearray()
        for message in self.responses.feed(body.body):
            if message.error_message:
                self.link.fail(unavailable(message.error_message))
                out += frame(message)
                continue
            chunk = parse_response(message.infer_response)
            text = await self.call.output.feed(chunk.text) if chunk.text and self.call.output else chunk.text
            if chunk.final and self.call.output is not None:
                text += self.call.output.flush()
            if text != chunk.text:
                replace_text(message.infer_response, text)
            self.final_seen = self.final_seen or chunk.final
            self.link.feed(dataclasses.replace(chunk, text=text))
            out += frame(message)
        mutation = ep.BodyMutation(body=bytes(out))
        return [
            ep.ProcessingResponse(
                response_body=ep.BodyResponse(response=ep.CommonResponse(body_mutation=mutation))
            )
        ]

    def _response_end(self, trailers: dict[str, str]) -> None:
        if self.link is None or self.final_seen:
            return
        status = trailers.get("grpc-status", "0")
        if status != "0":
            self.link.fail(unavailable(f"engine status {status}: {trailers.get('grpc-message', '')}"))
            return
        # Envoy did not stream the body here: what the engine counted is unknown; bill the bound.
        bound = self.call.max_tokens if self.call is not None else 0
        self.final_seen = True
        self.link.feed(EngineChunk("", True, None, bound, estimated=True))

    def end(self) -> asyncio.Task | None:
        """Envoy closed the conversation; a call whose response did not end is cut off."""
        if self.link is not None and not self.final_seen:
            self.link.fail(unavailable("Envoy ended the request before the response ended"))
        return self.task


def _header_pairs(headers: base_pb2.HeaderMap) -> list[tuple[str, str]]:
    return [
        (h.key.lower(), h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value)
        for h in headers.headers
    ]


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def _body(data: bytes, end: bool) -> ep.ProcessingResponse:
    streamed = ep.StreamedBodyResponse(body=data, end_of_stream=end)
    mutation = ep.BodyMutation(streamed_response=streamed)
    return ep.ProcessingResponse(
        request_body=ep.BodyResponse(response=ep.CommonResponse(body_mutation=mutation))
    )


def _refusal(exc: HarnessError) -> ep.ProcessingResponse:
    """A trailers-only gRPC answer with the call's status, as the router's front door gives."""
    return ep.ProcessingResponse(
        immediate_response=ep.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=200),
            grpc_status=ep.GrpcStatus(status=exc.code.value[0]),
            details=exc.code.name.lower(),
            body=exc.message.encode()[:1024],
        )
    )
