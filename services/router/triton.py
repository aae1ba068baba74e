"""Dispatch to Triton (TensorRT-LLM ensemble tensors) over ModelStreamInfer.

Every request goes over the bidirectional stream, even when the caller wants one answer: a
decoupled TensorRT-LLM model only accepts ModelStreamInfer. A model that is not decoupled
cannot stream tokens (it answers once, with ``stream=false``), so the pool asks each
endpoint's ModelConfig once which kind a model is. The request is built by hand
because the aio client refuses `triton_*` parameters, which we need to get an empty final
response (so the end of a generation is always signalled).
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from services.common import embedding_tensors
from services.common.errors import InvalidArgument, Unavailable
from services.router.engine import (
    EmbeddingRequest,
    EmbeddingResult,
    EngineChunk,
    EngineRequest,
    estimate_tokens,
)
from services.router.engine_access import NO_ACCESS, EndpointAccess

# The Triton engine's request and chunk are the engine seam's (engine.py).
TritonRequest = EngineRequest
TritonChunk = EngineChunk


_INT32, _FP32, _UINT64 = struct.Struct("<i"), struct.Struct("<f"), struct.Struct("<Q")
_TRUE, _FALSE = b"\x01", b"\x00"


def _tensor(name: str, datatype: str, shape: list[int]) -> service_pb2.ModelInferRequest.InferInputTensor:
    t = service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype)
    t.shape.extend(shape)
    return t


def build_request(req: TritonRequest) -> service_pb2.ModelInferRequest:
    """TensorRT-LLM ensemble inputs (batch dim first): text_input, max_tokens, stream, sampling."""
    msg = service_pb2.ModelInferRequest(model_name=req.model, id=req.request_id)
    msg.parameters["triton_enable_empty_final_response"].bool_param = True
    # One element per tensor, packed by hand as numpy would (little-endian; BYTES length-prefixed):
    # numpy costs some microseconds per tiny array, and this runs for every call.
    prompt = req.prompt.encode()
    inputs: list[tuple[str, str, bytes]] = [
        ("text_input", "BYTES", len(prompt).to_bytes(4, "little") + prompt),
        ("max_tokens", "INT32", _INT32.pack(req.max_tokens)),
        ("stream", "BOOL", _TRUE if req.stream else _FALSE),
        # Without it a non-streamed TensorRT-LLM answer starts with the prompt.
        ("exclude_input_in_output", "BOOL", _TRUE),
        # Usage is accounted from the engine's own counts, not re-tokenised here.
        ("return_num_input_tokens", "BOOL", _TRUE),
        ("return_num_output_tokens", "BOOL", _TRUE),
    ]
    if req.temperature > 0:
        inputs.append(("temperature", "FP32", _FP32.pack(req.temperature)))
    if req.top_p > 0:
        inputs.append(("top_p", "FP32", _FP32.pack(req.top_p)))
    if req.top_k > 0:
        inputs.append(("top_k", "INT32", _INT32.pack(req.top_k)))
    if req.seed is not None:
        inputs.append(("seed", "UINT64", _UINT64.pack(req.seed)))
    for name, dtype, raw in inputs:
        msg.inputs.append(_tensor(name, dtype, [1, 1]))
        msg.raw_input_contents.append(raw)
    if req.stop:
        stop = serialize_byte_tensor(np.array([[s.encode() for s in req.stop]], dtype=object)).item()
        msg.inputs.append(_tensor("stop_words", "BYTES", [1, len(req.stop)]))
        msg.raw_input_contents.append(stop)
    return msg


def parse_response(resp: service_pb2.ModelInferResponse) -> TritonChunk:
    # One pass over the outputs, per token: no dict of them, no helper closure per response.
    raw = resp.raw_output_contents
    text, input_tokens, output_tokens = "", None, None
    for out, data in zip(resp.outputs, raw, strict=False):  # outputs without contents carry nothing
        name = out.name
        if name == "text_output":
            text = _bytes_elements(data) if data else ""
        elif name == "num_input_tokens":
            input_tokens = _count(data)
        elif name == "num_output_tokens":
            output_tokens = _count(data)
    params = resp.parameters
    final = params["triton_final_response"].bool_param if "triton_final_response" in params else False
    return TritonChunk(text, final, input_tokens, output_tokens)


def _count(raw: bytes) -> int | None:
    """An INT32 count tensor's value (the sum when it has several elements); None when empty."""
    if not raw:
        return None
    if len(raw) == 4:
        return int.from_bytes(raw, "little", signed=True)
    return int(np.frombuffer(raw, np.int32).sum())


def _bytes_elements(raw: bytes) -> str:
    """Triton BYTES contents (4-byte little-endian length + data, per element) as one string;
    by hand, since numpy costs more than the decoding for the one-element tensors of a stream."""
    if len(raw) >= 4 and int.from_bytes(raw[:4], "little") == len(raw) - 4:
        return raw[4:].decode("utf-8", "replace")  # the common case: one element
    return "".join(v.decode("utf-8", "replace") for v in deserialize_bytes_tensor(raw).flatten())


class TritonPool:
    """The Triton gRPC `Engine`: one channel per endpoint address, reused across requests.

    `access(address)` says how to reach an endpoint (the router's `--engine-access`): headers
    sent on every call (a Triton with a restricted inference protocol wants its
    `triton-grpc-protocol-<key>: <value>`) and TLS with the given roots."""

    def __init__(self, access: Callable[[str], EndpointAccess] | None = None) -> None:
        self._access = access or (lambda _address: NO_ACCESS)
        self._stubs: dict[str, service_pb2_grpc.GRPCInferenceServiceStub] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._metadata: dict[str, tuple[tuple[str, str], ...]] = {}
        self._configs: dict[tuple[str, str], model_config_pb2.ModelConfig] = {}  # (address, model)

    def stub(self, address: str) -> service_pb2_grpc.GRPCInferenceServiceStub:
        stub = self._stubs.get(address)
        if stub is None:
            access = self._access(address)
            options = [("grpc.max_receive_message_length", 64 << 20)]
            if access.tls:
                roots = Path(access.ca_file).read_bytes() if access.ca_file else None
                credentials = grpc.ssl_channel_credentials(roots)
                channel = grpc.aio.secure_channel(address, credentials, options=options)
            else:
                channel = grpc.aio.insecure_channel(address, options=options)
            self._channels[address] = channel
            self._metadata[address] = access.headers
            stub = self._stubs[address] = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return stub

    def metadata(self, address: str) -> tuple[tuple[str, str], ...]:
        """The endpoint's headers (after `stub(address)` made its channel)."""
        return self._metadata.get(address, ())

    async def config(self, address: str, model: str) -> model_config_pb2.ModelConfig | None:
        """`model`'s ModelConfig on `address` (asked once); None when the endpoint cannot tell now."""
        key = (address, model)
        known = self._configs.get(key)
        if known is None:
            try:
                resp = await self.stub(address).ModelConfig(
                    service_pb2.ModelConfigRequest(name=model), timeout=2.0, metadata=self.metadata(address)
                )
            except grpc.aio.AioRpcError:
                return None
            known = self._configs[key] = resp.config
        return known

    async def decoupled(self, address: str, model: str) -> bool | None:
        """Whether `model` on `address` is decoupled; None when the endpoint cannot tell now."""
        config = await self.config(address, model)
        return None if config is None else config.model_transaction_policy.decoupled

    async def _is_decoupled(self, address: str, model: str) -> bool:
        # Unknown: assume decoupled and let the inference call itself report what is wrong.
        return await self.decoupled(address, model) is not False

    async def embed(self, address: str, req: EmbeddingRequest, timeout: float | None) -> EmbeddingResult:
        """The texts in batches of at most the model's max_batch_size (Triton refuses larger ones),
        sent at once so the server's dynamic batcher may run them together."""
        stub, metadata = self.stub(address), self.metadata(address)
        config = await self.config(address, req.model)
        size = config.max_batch_size if config is not None and config.max_batch_size > 0 else len(req.texts)
        parts = [
            dataclasses.replace(req, texts=req.texts[i : i + size]) for i in range(0, len(req.texts), size)
        ]
        results = await asyncio.gather(*(embed(stub, address, p, timeout, metadata) for p in parts))
        counted = all(r.per_text is not None for r in results)
        return EmbeddingResult(
            np.concatenate([r.vectors for r in results]),
            sum(r.input_tokens for r in results),
            any(r.estimated for r in results),
            tuple(n for r in results for n in r.per_text or ()) if counted else None,
        )

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels.values()), return_exceptions=True)
        self._channels.clear()
        self._stubs.clear()
        self._metadata.clear()

    async def stream(
        self, address: str, req: TritonRequest, timeout: float | None
    ) -> AsyncIterator[TritonChunk]:
        """Yields chunks until the final response. Errors before any text -> Unavailable (retryable)."""
        if req.stream and not await self._is_decoupled(address, req.model):
            req = dataclasses.replace(req, stream=False)
        stub = self.stub(address)
        # Written with the call's own write (no request iterator, so no task consuming it), so
        # `on_sent` runs once the request is really on its way, while the engine works.
        call = stub.ModelStreamInfer(timeout=timeout, metadata=self.metadata(address))
        got_final = False
        try:
            await call.write(build_request(req))
            await call.done_writing()
            if req.on_sent is not None:
                req.on_sent()  # raising cancels the call (finally)
            async for resp in call:
                if resp.error_message:
                    raise _stream_error(resp.error_message, req.model)
                chunk = parse_response(resp.infer_response)
                yield chunk
                if chunk.final:
                    got_final = True
                    break
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"backend {address} failed: {exc.code().name}: {exc.details()}") from exc
        finally:
            if not got_final:
                call.cancel()  # the caller went away or we failed: stop the upstream generation
        if not got_final:
            raise Unavailable(f"backend {address} closed the stream before the final response")


def _stream_error(message: str, model: str) -> Exception:
    if "unexpected" in message.lower() or "invalid" in message.lower() or "expected" in message.lower():
        return InvalidArgument(f"model {model!r} rejected the request: {message}")
    return Unavailable(f"model {model!r} failed: {message}")


async def embed(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    address: str,
    req: EmbeddingRequest,
    timeout: float | None,
    metadata: tuple[tuple[str, str], ...] = (),
) -> EmbeddingResult:
    """One ModelInfer of an embedding model (services/common/embedding_tensors.py)."""
    msg = embedding_tensors.build_request(req.model, req.texts, req.request_id)
    try:
        resp = await stub.ModelInfer(msg, timeout=timeout, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            raise InvalidArgument(f"model {req.model!r} rejected the request: {exc.details()}") from exc
        raise Unavailable(f"backend {address} failed: {exc.code().name}: {exc.details()}") from exc
    try:
        out = embedding_tensors.parse_response(resp, len(req.texts))
    except embedding_tensors.EmbeddingTensorError as exc:
        raise Unavailable(f"backend {address}: {exc}") from exc
    if out.tokens is None:
        return EmbeddingResult(out.vectors, sum(estimate_tokens(t) for t in req.texts), True)
    return EmbeddingResult(out.vectors, sum(out.tokens), per_text=out.tokens)
