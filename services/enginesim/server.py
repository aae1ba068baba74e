"""Triton's ``inference.GRPCInferenceService`` servicer over the simulator (grpc.aio).

Behaviour copied from Triton (see notes/triton-protocol.md): error codes and wording, the
decoupled rules, ``triton_final_response`` on streamed responses, the empty final response
on request, raw (4-byte length prefixed) BYTES contents, health and reflection services.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from services.common import embedding_tensors
from services.common import triton_tensors as tensors
from services.common.streams import serve_concurrently

from . import embedder
from .config import SimulatorConfig
from .faults import (
    INJECTED_INTERNAL,
    Fault,
    FaultInjector,
    InjectedInternal,
    InjectedUnavailable,
)
from .infer_request import Prepared, chunks, full_text, prepare, response_outputs
from .sequence import (
    EngineStoppedError,
    InvalidRequestError,
    QueueFullError,
    RequestCancelledError,
)
from .simulator import (
    InsufficientMemoryError,
    ModelNotFoundError,
    ModelNotReadyError,
    Simulator,
    UnknownRepositoryModelError,
)

log = logging.getLogger("enginesim")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
DECOUPLED_INFER_MESSAGE = "ModelInfer RPC doesn't support models with decoupled transaction policy"
STREAMING_NEEDS_DECOUPLED = "Streaming is only supported if model is deployed using decoupled mode."
EXTENSIONS = (
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
)

# Exception type -> gRPC status, for the errors the simulator and engine raise.
_STATUS: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (ModelNotReadyError, grpc.StatusCode.UNAVAILABLE),
    (tensors.TensorError, grpc.StatusCode.INVALID_ARGUMENT),
    (embedding_tensors.EmbeddingTensorError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (QueueFullError, grpc.StatusCode.UNAVAILABLE),
    (EngineStoppedError, grpc.StatusCode.UNAVAILABLE),
    (RequestCancelledError, grpc.StatusCode.CANCELLED),
    (InsufficientMemoryError, grpc.StatusCode.INTERNAL),  # what Triton answers a failed load
    (InjectedUnavailable, grpc.StatusCode.UNAVAILABLE),
    (InjectedInternal, grpc.StatusCode.INTERNAL),
    (UnknownRepositoryModelError, grpc.StatusCode.INTERNAL),  # Triton's answer to loading it
)
_HANDLED = tuple(exc for exc, _ in _STATUS)


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
    code = next(code for kind, code in _STATUS if isinstance(exc, kind))
    await context.abort(code, str(exc))
    raise AssertionError("unreachable")  # context.abort raises


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, sim: Simulator, config: SimulatorConfig, faults: FaultInjector) -> None:
        self._sim = sim
        self._config = config
        self._faults = faults

    # --- server and model state ----------------------------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._sim.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="triton", version=self._config.server_version, extensions=list(EXTENSIONS)
        )

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._sim.is_ready(request.name, request.version))

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        try:
            spec = self._sim.spec(request.name, request.version)
            if spec.embedding:
                return embedding_tensors.model_metadata(spec)
            return tensors.model_metadata(spec)
        except _HANDLED as exc:
            await _abort(context, exc)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        try:
            spec = self._sim.spec(request.name, request.version)
            if spec.embedding:
                return pb.ModelConfigResponse(
                    config=embedding_tensors.model_config(spec, spec.max_queue_size)
                )
            return pb.ModelConfigResponse(config=tensors.model_config(spec))
        except _HANDLED as exc:
            await _abort(context, exc)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        try:
            if request.name:
                engines = [self._sim.engine(request.name, request.version)]
            else:
                engines = [e for n, e in sorted(self._sim.engines().items()) if self._sim.is_ready(n)]
        except _HANDLED as exc:
            await _abort(context, exc)
        resp = pb.ModelStatisticsResponse()
        for engine in engines:
            st = engine.stats
            ms = resp.model_stats.add(
                name=engine.spec.name,
                version=engine.spec.version,
                last_inference=st.last_inference_ms,
                inference_count=st.success,
                execution_count=st.execution_count,
            )
            stats = ms.inference_stats
            stats.success.count, stats.success.ns = st.success, st.request_ns
            stats.fail.count = sum(st.failures.values())
            stats.queue.count, stats.queue.ns = st.success, st.queue_ns
            stats.compute_infer.count, stats.compute_infer.ns = st.success, st.compute_ns
            stats.compute_input.count = stats.compute_output.count = st.success
        return resp

    # --- repository ------------------------------------------------------------------------
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        resp = pb.RepositoryIndexResponse()
        for entry in self._sim.index(ready_only=request.ready):
            resp.models.add(name=entry.name, version=entry.version, state=entry.state, reason=entry.reason)
        return resp

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        # A "config" parameter (JSON ModelConfig override) is accepted and ignored for now.
        try:
            await self._sim.load(request.model_name)
        except _HANDLED as exc:
            await _abort(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        try:
            await self._sim.unload(request.model_name, wait=False)
        except _HANDLED as exc:
            await _abort(context, exc)
        return pb.RepositoryModelUnloadResponse()

    # --- inference -------------------------------------------------------------------------
    async def _inject(self, p: Prepared) -> Fault | None:
        """Apply this request's drawn fault before it is queued; a midstream one is returned."""
        fault = self._faults.draw(p.spec.name)
        if fault is None:
            return None
        if fault.kind == "unavailable":
            p.engine.stats.failures["BACKEND"] += 1
            raise InjectedUnavailable()
        if fault.kind == "internal":
            p.engine.stats.failures["BACKEND"] += 1
            raise InjectedInternal(INJECTED_INTERNAL)
        if fault.kind == "slow_start":
            await asyncio.sleep(fault.slow_start_ms / 1000.0 / self._sim.time_scale)
        return fault

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        try:
            spec = self._sim.spec(request.model_name, request.model_version)
            if spec.embedding:
                return await self._embed(request, context)
            if spec.decoupled:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, DECOUPLED_INFER_MESSAGE)
            p = prepare(self._sim, request)
            if p.stream:
                raise tensors.TensorError(STREAMING_NEEDS_DECOUPLED)
            fault = await self._inject(p)
            seq = p.engine.submit(p.gen)
        except _HANDLED as exc:
            await _abort(context, exc)
        try:
            async for _ in chunks(seq, fault):
                pass
        except _HANDLED as exc:
            await _abort(context, exc)
        finally:
            seq.cancel()  # no-op when finished; frees the slot if the client went away
        return tensors.build_response(
            p.spec, request.id, response_outputs(p, seq, full_text(p, seq), seq.output_tokens)
        )

    async def _embed(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        """An embedding model's batch: every text through the engine, then the vectors."""
        engine = self._sim.engine(request.model_name, request.model_version)
        texts = embedding_tensors.decode_texts(request, engine.spec)
        fault = self._faults.draw(engine.spec.name)
        if fault is not None and fault.kind in ("unavailable", "internal"):
            engine.stats.failures["BACKEND"] += 1
            raise (
                InjectedUnavailable() if fault.kind == "unavailable" else InjectedInternal(INJECTED_INTERNAL)
            )
        vectors, tokens = await embedder.embed(engine, texts, request.id)
        return embedding_tensors.build_response(engine.spec, request.id, vectors, tokens)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # Requests on one stream run concurrently; responses interleave, told apart by `id`.
        async for response in serve_concurrently(request_iterator, self._stream_one):
            yield response

    async def _stream_one(
        self, request: pb.ModelInferRequest, emit: Callable[[pb.ModelStreamInferResponse], None]
    ) -> None:
        def error(message: str) -> None:
            emit(
                pb.ModelStreamInferResponse(
                    error_message=message,
                    infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id),
                )
            )

        def respond(outputs: dict[str, str | int], final: bool) -> None:
            emit(
                pb.ModelStreamInferResponse(
                    infer_response=tensors.build_response(p.spec, request.id, outputs, final=final)
                )
            )

        try:
            p = prepare(self._sim, request)
            if p.stream and not p.spec.decoupled:
                raise tensors.TensorError(STREAMING_NEEDS_DECOUPLED)
            fault = await self._inject(p)
            seq = p.engine.submit(p.gen)
        except _HANDLED as exc:
            error(str(exc))
            return
        # Only decoupled models send a separate empty final response.
        empty_final = p.empty_final and p.spec.decoupled
        try:
            if p.stream:
                async for chunk in chunks(seq, fault):
                    if chunk.token_id >= 0 or not empty_final:
                        respond(
                            response_outputs(p, seq, chunk.text, chunk.index), chunk.final and not empty_final
                        )
            else:
                async for _ in chunks(seq, fault):
                    pass
                respond(response_outputs(p, seq, full_text(p, seq), seq.output_tokens), not empty_final)
            if empty_final:
                respond({}, True)
        except _HANDLED as exc:
            error(str(exc))
        finally:
            seq.cancel()

    # --- features this server does not have (answer like a Triton built without them) -----
    async def _unsupported(self, context: Any, feature: str) -> NoReturn:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"{feature} is not supported by the engine simulator"
        )
        raise AssertionError("unreachable")

    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        await self._unsupported(context, "system shared memory")

    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        await self._unsupported(context, "system shared memory")

    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        await self._unsupported(context, "system shared memory")

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        await self._unsupported(context, "CUDA shared memory")

    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        await self._unsupported(context, "CUDA shared memory")

    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        await self._unsupported(context, "CUDA shared memory")

    async def TraceSetting(self, request: Any, context: Any) -> Any:
        await self._unsupported(context, "trace")

    async def LogSettings(self, request: Any, context: Any) -> Any:
        await self._unsupported(context, "logging")
