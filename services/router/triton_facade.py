"""Triton's own gRPC protocol on the router, so existing `tritonclient` code can point at the
Harness instead of a Triton server and keep working.

Every inference goes through the same path as Generate (identity, policy, admission, audit,
cost); only the wire format differs. A model is named by its catalog name ("llama-3-8b") or
by the Triton model it maps to ("llama-3-8b-instruct"). A model is decoupled here when the
engines serving it are (ModelConfig asks one of them), and then ModelInfer is UNIMPLEMENTED
as on Triton: such models answer over ModelStreamInfer. Errors on ModelStreamInfer arrive as
`error_message` on the stream (as Triton does); the stream itself stays open for the caller's
next request. RPCs the front door has no use for (shared memory, trace and log settings,
statistics, repository load/unload) are UNIMPLEMENTED, like a Triton built without them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from harness.registry.v1 import registry_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from services.common import context as reqctx
from services.common import embedding_tensors
from services.common import triton_tensors as tensors
from services.common.errors import HarnessError, InvalidArgument, NotFound, Unimplemented
from services.common.streams import serve_concurrently
from services.router import chunk_interval
from services.router.core import Call, EmbeddingInput, GenerationInput, Router
from services.router.stages.embed import MAX_INPUTS
from services.router.stages.resolve import require_caller
from services.router.triton_unsupported import UnsupportedTritonRpcs

log = logging.getLogger("harness.router.triton")
HOLD_S = 0.001  # longest a streamed delta waits to learn whether it is the last
EXTENSIONS = ("model_repository", "model_configuration", "parameters")
DECOUPLED_INFER_MESSAGE = "ModelInfer RPC doesn't support models with decoupled transaction policy"
# Whether a Triton model is decoupled on a given endpoint address (None: cannot tell now).
DecoupledLookup = Callable[[str, str], Awaitable[bool | None]]
# The outputs the front door fills in (`_response`), with their values' types.
VALUE_TYPES: dict[str, type] = {"text_output": str, "num_input_tokens": int, "num_output_tokens": int}


@dataclass(frozen=True)
class FacadeModel:
    """A catalog model as the tensor schema sees it (always the TensorRT-LLM ensemble layout)."""

    name: str
    version: str = "1"
    max_batch_size: int = 1
    layout: str = "ensemble"


@dataclass(frozen=True)
class FacadeEmbeddingModel:
    """A catalog embedding model as the embedding tensors see it (services/common/embedding_tensors.py)."""

    name: str
    dimensions: int
    version: str = "1"
    max_batch_size: int = MAX_INPUTS  # the router batches for the engines behind it


def generation_input(model_name: str, values: dict[str, Any]) -> GenerationInput:
    seed = tensors.scalar(values, "seed")
    return GenerationInput(
        prompt=tensors.scalar(values, "text_input", ""),
        max_tokens=int(tensors.scalar(values, "max_tokens", 0)),
        temperature=float(tensors.scalar(values, "temperature", 0.0)),
        top_p=float(tensors.scalar(values, "top_p", 0.0)),
        top_k=int(tensors.scalar(values, "top_k", 0)),
        seed=int(seed) if seed is not None else None,
        stop=tensors.strings(values, "stop_words"),
        model=model_name,
    )


class TritonFacadeServicer(UnsupportedTritonRpcs, pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, router: Router, server_version: str = "harness", decoupled: DecoupledLookup | None = None
    ) -> None:
        self._router = router
        self._version = server_version
        self._decoupled_on = decoupled

    # --- server and models ---------------------------------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        """Live while the process serves."""
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        """Ready once the router holds a copy of the registry and of the pool's endpoints."""
        return pb.ServerReadyResponse(ready=self._router.registry.ready and self._router.endpoints.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        """Names the Harness (not Triton), with the extensions the front door supports."""
        return pb.ServerMetadataResponse(name="harness", version=self._version, extensions=list(EXTENSIONS))

    async def _model(self, name: str, version: str = "") -> registry_pb2.Model:
        """The calling agent's model by catalog or Triton name, else Triton's NOT_FOUND wording."""
        _check_version(name, version)
        model = await self._find(name)
        if model is None:
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        return model

    async def _find(self, name: str) -> registry_pb2.Model | None:
        """The calling agent's model by catalog or Triton name, None when it has none of that name."""
        return await self._router.allowed_model(name)

    async def _decoupled(self, model: registry_pb2.Model) -> bool:
        """As the engines serving the model say (the first that can tell); False when none can."""
        if self._decoupled_on is None:
            return False
        for candidate in self._router.endpoints.candidates(model.triton_model)[:3]:
            known = await self._decoupled_on(candidate.address, model.triton_model)
            if known is not None:
                return known
        return False

    def _ready(self, model: registry_pb2.Model) -> bool:
        return bool(self._router.endpoints.candidates(model.triton_model))

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        """True when the agent may use the model and some endpoint has it loaded."""
        try:
            model = await self._model(request.name, request.version)
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self._ready(model))

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        """The TensorRT-LLM ensemble tensors, under the name the caller used."""
        model = await self._model(request.name, request.version)
        if model.kind == registry_pb2.MODEL_KIND_EMBEDDING:
            return embedding_tensors.model_metadata(FacadeEmbeddingModel(request.name, model.dimensions))
        return tensors.model_metadata(FacadeModel(request.name))

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        """The ensemble tensors under the caller's name; decoupled as the serving engines are."""
        model = await self._model(request.name, request.version)
        if model.kind == registry_pb2.MODEL_KIND_EMBEDDING:
            config = embedding_tensors.model_config(FacadeEmbeddingModel(request.name, model.dimensions))
            return pb.ModelConfigResponse(config=config)
        facade = FacadeModel(request.name)
        return pb.ModelConfigResponse(config=tensors.tensor_config(facade, await self._decoupled(model)))

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        """The models the calling agent may use (catalog names), READY where an endpoint has them."""
        resp = pb.RepositoryIndexResponse()
        for model in await self._router.allowed_models():
            ready = self._ready(model)
            if request.ready and not ready:
                continue
            resp.models.add(
                name=model.name,
                version="1",
                state="READY" if ready else "UNAVAILABLE",
                reason="" if ready else f"no endpoint has {model.triton_model} loaded",
            )
        return resp

    # --- inference -------------------------------------------------------------------------
    async def _prepare(self, request: pb.ModelInferRequest) -> tuple[GenerationInput, set[str], bool, bool]:
        values = tensors.decode_inputs(request, FacadeModel(request.model_name))
        inp = generation_input(request.model_name, values)
        if not inp.prompt:
            raise InvalidArgument("text_input is empty: send the prompt in text_input")
        outputs = tensors.select_outputs(request, FacadeModel(request.model_name), values)
        stream = bool(tensors.scalar(values, "stream", False))
        return inp, outputs, stream, _bool_parameter(request, "triton_enable_empty_final_response")

    @staticmethod
    def _response(
        request: pb.ModelInferRequest,
        outputs: set[str],
        text: str,
        result: Call,
        final: bool | None,
    ) -> pb.ModelInferResponse:
        values: dict[str, str | int] = {
            "text_output": text,
            "num_input_tokens": result.input_tokens,
            "num_output_tokens": result.output_tokens,
        }
        chosen = {k: v for k, v in values.items() if k in outputs}
        return tensors.build_response(FacadeModel(request.model_name), request.id, chosen, final=final)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        """One answer for a whole generation of a model that is not decoupled."""
        require_caller(reqctx.current().identity)  # who may ask comes before what is asked
        _check_version(request.model_name, request.model_version)
        if not request.model_name:
            raise NotFound("Request for unknown model: '' is not found")
        model = await self._find(request.model_name)  # None: Generate's own refusal (permission...)
        if model is not None and model.kind == registry_pb2.MODEL_KIND_EMBEDDING:
            return await self._embed(request, model, context.time_remaining())
        if model is not None and await self._decoupled(model):
            raise Unimplemented(DECOUPLED_INFER_MESSAGE)
        try:
            inp, outputs, _, _ = await self._prepare(request)
        except tensors.TensorError as exc:
            raise InvalidArgument(str(exc)) from exc
        call = Call(inp)
        async for _ in self._router.run(call):
            pass
        return self._response(request, outputs, call.text, call, None)

    async def _embed(
        self, request: pb.ModelInferRequest, model: registry_pb2.Model, timeout_s: float | None
    ) -> pb.ModelInferResponse:
        """An embedding model's batch (the embedding tensors) through the router's Embed path."""
        spec = FacadeEmbeddingModel(request.model_name, model.dimensions)
        try:
            texts = embedding_tensors.decode_texts(request, spec)
        except embedding_tensors.EmbeddingTensorError as exc:
            raise InvalidArgument(str(exc)) from exc
        call = Call(EmbeddingInput(tuple(texts), model=request.model_name, timeout_s=timeout_s))
        await self._router.embed(call)
        return embedding_tensors.build_response(spec, request.id, call.vectors, call.text_tokens)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests on one stream run concurrently; each answers as Triton's decoupled models do."""
        interval_ms = chunk_interval.interval_ms(context.invocation_metadata())  # for the whole stream
        async for response in serve_concurrently(
            request_iterator, functools.partial(self._one, interval_ms=interval_ms)
        ):
            yield response

    async def _one(self, request: pb.ModelInferRequest, emit, interval_ms: int = 0) -> None:
        # Each request on the stream is its own call: its own request id for audit and usage
        # (the task runs in a copy of the stream's context, so this stays local to it).
        reqctx.set_current(dataclasses.replace(reqctx.current(), request_id=str(uuid.uuid4())))
        try:
            _check_version(request.model_name, request.model_version)  # as ModelInfer checks it
            try:
                inp, outputs, stream, empty_final = await self._prepare(request)
            except tensors.TensorError:
                # An embedding model's request has the embedding tensors, not these (looked up
                # only now: the streamed generations, the hot path, pay no lookup for it).
                model = await self._find(request.model_name)
                if model is None or model.kind != registry_pb2.MODEL_KIND_EMBEDDING:
                    raise
                answer = await self._embed(request, model, None)
                answer.parameters["triton_final_response"].bool_param = True
                emit(_wrap(answer))
                return
            call = Call(inp)
            if stream:
                call.inp = dataclasses.replace(inp, min_chunk_interval_ms=interval_ms)
                await self._stream(request, call, outputs, empty_final, emit)
            else:
                async for _ in self._router.run(call):
                    pass
                emit(_wrap(self._response(request, outputs, call.text, call, True)))
        except (HarnessError, tensors.TensorError) as exc:
            code = exc.code.name if isinstance(exc, HarnessError) else grpc.StatusCode.INVALID_ARGUMENT.name
            emit(
                pb.ModelStreamInferResponse(
                    error_message=f"{code}: {exc}",
                    infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id),
                )
            )
        except Exception:
            log.exception("stream request %s failed", request.id)
            emit(
                pb.ModelStreamInferResponse(
                    error_message=f"INTERNAL: internal error (request id {reqctx.current().request_id})",
                    infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id),
                )
            )

    async def _stream(self, request, call: Call, outputs: set[str], empty_final: bool, emit) -> None:
        """Streams deltas as Triton's decoupled TensorRT-LLM models do: the last response carries
        the final flag. Which delta is last is often only known when the engine's (empty) final
        response follows it, so a delta after the first is held until the next one arrives or
        HOLD_S passes; the first goes out at once (time to first token is what callers feel). A
        last delta released by the timer is followed by a final response with empty text."""

        shaped = tensors.StreamedResponses(
            FacadeModel(request.model_name),
            request.id,
            {k: t for k, t in VALUE_TYPES.items() if k in outputs},
        )

        def send(text: str, final: bool) -> None:
            values = {
                "text_output": text,
                "num_input_tokens": call.input_tokens,
                "num_output_tokens": call.output_tokens,
            }
            emit(shaped.response(values, final))

        loop = asyncio.get_running_loop()
        pending: str | None = None
        held_at = 0.0
        # One timer for the stream, not one per delta: it stays armed while deltas come and
        # go, and when it fires with a younger delta held, it waits out that one's HOLD_S.
        timer: asyncio.TimerHandle | None = None

        def release() -> None:
            nonlocal pending
            if pending is not None:
                send(pending, False)
                pending = None

        def on_timer() -> None:
            nonlocal timer
            timer = None
            if pending is not None and loop.time() < held_at + HOLD_S:
                timer = loop.call_at(held_at + HOLD_S, on_timer)
            else:
                release()

        first, finished = True, False
        try:
            # Drain the generator even after the final response went out: the router records
            # the call when it ends, and leaving early would read as a cancel.
            async for chunk in self._router.run(call):
                delta = chunk.text
                if not delta:
                    if timer is not None:  # the empty final chunk: a held delta goes out as
                        timer.cancel()  # the final one below
                        timer = None
                    continue
                release()
                if finished:
                    log.warning("request %s: text after the final response was dropped", request.id)
                elif chunk.final and not empty_final:
                    send(delta, True)
                    finished = True
                elif first:
                    send(delta, False)
                    first = False
                else:
                    pending, held_at = delta, loop.time()
                    if timer is None:
                        timer = loop.call_at(held_at + HOLD_S, on_timer)
        finally:
            if timer is not None:
                timer.cancel()
        if finished:
            return
        if empty_final:
            release()
            emit(_wrap(self._response(request, set(), "", call, True)))
        else:
            # The last delta if still held; else an empty final that still carries the outputs
            # asked for, so code reading text_output from every response keeps working.
            send(pending or "", True)
            pending = None


def _check_version(name: str, version: str) -> None:
    if version not in ("", "1"):
        raise NotFound(f"Request for unknown model: '{name}' version {version} is not found")


def _bool_parameter(request: pb.ModelInferRequest, name: str) -> bool:
    """A request parameter the front door reads, refused when of another type than bool (as
    Triton refuses it) rather than read as false."""
    param = request.parameters.get(name)
    if param is None:
        return False
    kind = param.WhichOneof("parameter_choice")
    if kind != "bool_param":
        raise InvalidArgument(f"invalid value type for '{name}' parameter: expected bool_param, got {kind}")
    return param.bool_param


def _wrap(resp: pb.ModelInferResponse) -> pb.ModelStreamInferResponse:
    return pb.ModelStreamInferResponse(infer_response=resp)
