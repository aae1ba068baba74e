"""The tensors of an embedding model on Triton, and their wire encoding (protobuf, no grpc).

One contract for every embedding model the Harness serves (the engine simulator's, the PyTriton
sentence-transformers model, or your own Triton model with the same names):

- input ``text_input`` BYTES, dims [1], batched: a request of N texts has shape [N, 1];
- output ``embedding`` FP32, dims [-1]: shape [N, D], row i the vector of text i;
- output ``num_input_tokens`` INT32, dims [1]: shape [N, 1], the tokens the model read of each
  text (usage is billed from them; without it the router estimates from the text).

The model is not decoupled (one ModelInfer answers the whole batch) and has max_batch_size > 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import serialize_byte_tensor

from services.common.bytes_tensor import bytes_elements

TEXT_INPUT = "text_input"
EMBEDDING = "embedding"
NUM_INPUT_TOKENS = "num_input_tokens"


class EmbeddingModel(Protocol):
    name: str
    version: str
    max_batch_size: int
    dimensions: int


class EmbeddingTensorError(ValueError):
    """The request's tensors do not fit the embedding contract (INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # float32 [N, D]
    tokens: tuple[int, ...] | None  # per text, None when the model did not count them


# --- the router's side: ask and read ------------------------------------------------------------
def build_request(model: str, texts: Sequence[str], request_id: str = "") -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name=model, id=request_id)
    tensor = msg.inputs.add(name=TEXT_INPUT, datatype="BYTES")
    tensor.shape.extend([len(texts), 1])
    raw = serialize_byte_tensor(np.array([[t.encode("utf-8")] for t in texts], dtype=object))
    msg.raw_input_contents.append(raw.item())
    for name in (EMBEDDING, NUM_INPUT_TOKENS):
        msg.outputs.add(name=name)
    return msg


def parse_response(resp: pb.ModelInferResponse, count: int) -> Embeddings:
    """The vectors of a ModelInfer answer for `count` texts (EmbeddingTensorError if malformed)."""
    raws = {out.name: (out, resp.raw_output_contents[i]) for i, out in enumerate(resp.outputs)
            if i < len(resp.raw_output_contents)}  # fmt: skip
    if EMBEDDING not in raws:
        raise EmbeddingTensorError(f"model {resp.model_name!r} answered without an '{EMBEDDING}' output")
    out, raw = raws[EMBEDDING]
    shape = tuple(out.shape)
    if out.datatype != "FP32" or len(shape) != 2 or shape[0] != count or shape[1] < 1:
        raise EmbeddingTensorError(
            f"model {resp.model_name!r} answered '{EMBEDDING}' as {out.datatype}{list(shape)}; "
            f"expected FP32[{count}, D]"
        )
    if len(raw) != count * shape[1] * 4:
        raise EmbeddingTensorError(f"model {resp.model_name!r}: '{EMBEDDING}' has {len(raw)} bytes")
    vectors = np.frombuffer(raw, dtype="<f4").reshape(shape)
    tokens = None
    if NUM_INPUT_TOKENS in raws:
        out, raw = raws[NUM_INPUT_TOKENS]
        if out.datatype == "INT32" and len(raw) == count * 4:
            tokens = tuple(int(n) for n in np.frombuffer(raw, dtype="<i4"))
    return Embeddings(vectors, tokens)


# --- the server's side (the engine simulator): read and answer ----------------------------------
def decode_texts(request: pb.ModelInferRequest, spec: EmbeddingModel) -> list[str]:
    """The texts of a request, validated against the contract with Triton's wording."""
    known = {TEXT_INPUT}
    for tensor in request.inputs:
        if tensor.name not in known:
            raise EmbeddingTensorError(f"unexpected inference input '{tensor.name}' for model '{spec.name}'")
    found = [i for i, t in enumerate(request.inputs) if t.name == TEXT_INPUT]
    if len(found) != 1:
        raise EmbeddingTensorError(
            f"expected 1 inputs but got {len(request.inputs)} inputs for model '{spec.name}'"
        )
    index = found[0]
    tensor = request.inputs[index]
    if tensor.datatype != "BYTES":
        raise EmbeddingTensorError(
            f"inference input '{TEXT_INPUT}' data-type is '{tensor.datatype}', but model "
            f"'{spec.name}' expects 'BYTES'"
        )
    shape = tuple(tensor.shape)
    if len(shape) != 2 or shape[1] != 1:
        raise EmbeddingTensorError(
            f"unexpected shape for input '{TEXT_INPUT}' for model '{spec.name}'. "
            f"Expected [-1,1], got [{','.join(map(str, shape))}]"
        )
    if not 1 <= shape[0] <= spec.max_batch_size:
        raise EmbeddingTensorError(
            f"inference request batch-size must be <= {spec.max_batch_size} for '{spec.name}', got {shape[0]}"
        )
    if request.raw_input_contents:
        try:
            values = np.array(bytes_elements(request.raw_input_contents[index], shape[0]), dtype=object)
        except ValueError as exc:
            raise EmbeddingTensorError(
                f"input '{TEXT_INPUT}': malformed BYTES tensor contents ({exc})"
            ) from None
    else:
        values = np.array(list(tensor.contents.bytes_contents), dtype=object)
    if values.size != shape[0]:
        raise EmbeddingTensorError(
            f"unexpected number of string elements {values.size} for inference input "
            f"'{TEXT_INPUT}', expecting {shape[0]}"
        )
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values.flat]


def build_response(
    spec: EmbeddingModel, request_id: str, vectors: np.ndarray, tokens: Sequence[int] | None
) -> pb.ModelInferResponse:
    """The answer; `num_input_tokens` only when the counts per text are known (`tokens`)."""
    resp = pb.ModelInferResponse(model_name=spec.name, model_version=spec.version, id=request_id)
    count = vectors.shape[0]
    resp.outputs.add(name=EMBEDDING, datatype="FP32", shape=[count, vectors.shape[1]])
    resp.raw_output_contents.append(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
    if tokens is not None:
        resp.outputs.add(name=NUM_INPUT_TOKENS, datatype="INT32", shape=[count, 1])
        resp.raw_output_contents.append(np.asarray(tokens, dtype="<i4").tobytes())
    return resp


def model_config(spec: EmbeddingModel, max_queue_size: int = 0) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=spec.name, backend="python", max_batch_size=spec.max_batch_size)
    cfg.input.add(name=TEXT_INPUT, data_type=mc.TYPE_STRING, dims=[1])
    cfg.output.add(name=EMBEDDING, data_type=mc.TYPE_FP32, dims=[spec.dimensions or -1])
    cfg.output.add(name=NUM_INPUT_TOKENS, data_type=mc.TYPE_INT32, dims=[1])
    cfg.dynamic_batching.default_queue_policy.max_queue_size = max_queue_size
    return cfg


def model_metadata(spec: EmbeddingModel) -> pb.ModelMetadataResponse:
    meta = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=spec.name,
        versions=[spec.version],
        platform="python",
        inputs=[meta(name=TEXT_INPUT, datatype="BYTES", shape=[-1, 1])],
        outputs=[
            meta(name=EMBEDDING, datatype="FP32", shape=[-1, spec.dimensions or -1]),
            meta(name=NUM_INPUT_TOKENS, datatype="INT32", shape=[-1, 1]),
        ],
    )
