"""TensorRT-LLM ensemble/BLS tensor schema and its Triton wire encoding (protobuf, no grpc).

The same tensor names serve both layouts (``ensemble`` and ``tensorrt_llm_bls``), as in the
TensorRT-LLM backend's ``all_models/inflight_batcher_llm``. Validation errors use Triton's
wording where Triton has one, and are raised as :class:`TensorError` (INVALID_ARGUMENT).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from services.common.bytes_tensor import MAX_BYTES_ELEMENTS, bytes_elements


class TensorModel(Protocol):
    """What the tensor schema needs of a model (the simulator's ModelSpec, or the router's
    view of a catalog model on its Triton-compatible front door)."""

    name: str
    version: str
    max_batch_size: int
    layout: str


class ConfiguredModel(TensorModel, Protocol):
    """What ``model_config`` needs besides the tensor schema (the simulator's ModelSpec)."""

    decoupled: bool
    max_queue_size: int
    max_running_sequences: int
    kv_block_size: int


class TensorError(ValueError):
    """A request tensor is missing, unknown or has the wrong type/shape (INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # Triton wire name: BYTES, INT32, ...
    dims: tuple[int, ...]  # without the batch dimension
    optional: bool = True


INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("text_input", "BYTES", (1,), optional=False),
    TensorSpec("max_tokens", "INT32", (1,), optional=False),
    *(
        TensorSpec(n, "INT32", (1,))
        for n in ("num_return_sequences", "end_id", "pad_id", "top_k", "min_tokens", "beam_width")
    ),
    TensorSpec("bad_words", "BYTES", (-1,)),
    TensorSpec("stop_words", "BYTES", (-1,)),
    *(
        TensorSpec(n, "FP32", (1,))
        for n in (
            "top_p",
            "temperature",
            "length_penalty",
            "repetition_penalty",
            "presence_penalty",
            "frequency_penalty",
        )
    ),
    TensorSpec("seed", "UINT64", (1,)),
    TensorSpec("lora_task_id", "UINT64", (1,)),
    *(
        TensorSpec(n, "BOOL", (1,))
        for n in (
            "stream",
            "exclude_input_in_output",
            "return_log_probs",
            "return_perf_metrics",
            "return_num_input_tokens",
            "return_num_output_tokens",
        )
    ),
)
# The outputs the simulator produces (no log probs). The perf-metric ones are returned with
# return_perf_metrics=true, as tensorrt_llm's model.py does; times are wall-clock ns.
PERF_METRIC_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("kv_cache_alloc_new_blocks", "INT32", (1,)),
    TensorSpec("kv_cache_reused_blocks", "INT32", (1,)),
    TensorSpec("kv_cache_alloc_total_blocks", "INT32", (1,)),
    TensorSpec("arrival_time_ns", "INT64", (1,)),
    TensorSpec("first_scheduled_time_ns", "INT64", (1,)),
    TensorSpec("first_token_time_ns", "INT64", (1,)),
    TensorSpec("last_token_time_ns", "INT64", (1,)),
)
OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("text_output", "BYTES", (-1,)),
    TensorSpec("num_input_tokens", "INT32", (1,)),
    TensorSpec("num_output_tokens", "INT32", (1,)),
    *PERF_METRIC_OUTPUTS,
)
_INPUTS_BY_NAME = {t.name: t for t in INPUTS}
_REQUIRED_INPUTS = sum(1 for t in INPUTS if not t.optional)
_OUTPUT_NAMES = {t.name for t in OUTPUTS}
_OUTPUT_ORDER = tuple(t.name for t in OUTPUTS)  # schema order, so responses are stable
_OUTPUT_DTYPES = {t.name: t.datatype for t in OUTPUTS}
_PACK = {"INT32": struct.Struct("<i").pack, "INT64": struct.Struct("<q").pack}

_NP_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
# Which InferTensorContents field carries each datatype when raw contents are not used.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_CONFIG_TYPES = {"BYTES": mc.TYPE_STRING, **{k: getattr(mc, f"TYPE_{k}") for k in _NP_DTYPES}}


def _shape_str(shape: Any) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def decode_inputs(request: pb.ModelInferRequest, spec: TensorModel) -> dict[str, np.ndarray]:
    """Validate the request's inputs against the schema and return them as numpy arrays.

    Arrays keep their full shape (batch dimension first). The simulator serves batch 1.
    """
    model = spec.name
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise TensorError(
            f"expected {len(request.inputs)} raw input contents (one per input) but got {len(raw)}"
        )
    names = [t.name for t in request.inputs]
    missing = [t.name for t in INPUTS if not t.optional and t.name not in names]
    if missing:  # Triton states the count it expects first, then names what is missing
        raise TensorError(
            f"expected number of inputs between {_REQUIRED_INPUTS} and {len(INPUTS)} but got "
            f"{len(names)} inputs for model '{model}'. "
            f"Got input(s) {names}, but missing required input(s) {missing}. "
            "Please provide all required input(s)."
        )
    values: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        schema = _INPUTS_BY_NAME.get(tensor.name)
        if schema is None:
            raise TensorError(f"unexpected inference input '{tensor.name}' for model '{model}'")
        if tensor.name in values:
            raise TensorError(f"input '{tensor.name}' is given twice")
        if tensor.datatype != schema.datatype:
            raise TensorError(
                f"inference input '{tensor.name}' data-type is '{tensor.datatype}', "
                f"but model '{model}' expects '{schema.datatype}'"
            )
        shape = tuple(tensor.shape)
        dims_ok = len(shape) == len(schema.dims) + 1 and all(
            (want == -1 and got >= 0) or got == want for got, want in zip(shape[1:], schema.dims, strict=True)
        )
        if not dims_ok:
            raise TensorError(
                f"unexpected shape for input '{tensor.name}' for model '{model}'. "
                f"Expected {_shape_str((-1, *schema.dims))}, got {_shape_str(shape)}"
            )
        if shape[0] < 1 or shape[0] > spec.max_batch_size:
            raise TensorError(
                f"inference request batch-size must be <= {spec.max_batch_size} for '{model}', got {shape[0]}"
            )
        if shape[0] != 1:
            raise TensorError(
                f"one prompt per request (batch size 1) is served, got {shape[0]} for '{model}'"
            )
        values[tensor.name] = _tensor_array(tensor, raw[i] if raw else None, shape)
    return values


def _tensor_array(
    tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, shape: tuple
) -> np.ndarray:
    count = math.prod(shape)  # 1 for a scalar (); numpy's prod costs ~5 us per call
    if tensor.datatype == "BYTES":
        if count > MAX_BYTES_ELEMENTS:
            raise TensorError(
                f"input '{tensor.name}' declares {count} string elements; at most {MAX_BYTES_ELEMENTS} are taken"
            )
        if raw is not None:
            try:
                arr = np.array(bytes_elements(raw, count), dtype=object)
            except ValueError as exc:
                raise TensorError(f"input '{tensor.name}': malformed BYTES tensor contents ({exc})") from None
        else:
            contents = tensor.contents.bytes_contents
            if len(contents) != count:  # counted before a million of them are copied
                raise TensorError(
                    f"unexpected number of string elements {len(contents)} for inference input "
                    f"'{tensor.name}', expecting {count}"
                )
            arr = np.array(list(contents), dtype=object)
        return arr.reshape(shape)
    dtype = np.dtype(_NP_DTYPES[tensor.datatype])
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise TensorError(
                f"unexpected total byte size {len(raw)} for input '{tensor.name}', "
                f"expecting {count * dtype.itemsize}"
            )
        arr = np.frombuffer(raw, dtype=dtype)
    else:
        contents = getattr(tensor.contents, _CONTENTS_FIELD[tensor.datatype])
        if len(contents) != count:
            raise TensorError(
                f"unexpected number of elements {len(contents)} for input '{tensor.name}', expecting {count}"
            )
        arr = np.array(list(contents), dtype=dtype)
    return arr.reshape(shape)


def scalar(values: Mapping[str, np.ndarray], name: str, default: Any = None) -> Any:
    """First element of an input as a Python value (bytes decoded as UTF-8)."""
    arr = values.get(name)
    if arr is None or arr.size == 0:
        return default
    item = arr.flat[0]
    if isinstance(item, bytes):
        return item.decode("utf-8", "replace")
    return item.item() if hasattr(item, "item") else item


def strings(values: Mapping[str, np.ndarray], name: str) -> tuple[str, ...]:
    arr = values.get(name)
    if arr is None:
        return ()
    return tuple(b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b) for b in arr.flat)


def select_outputs(
    request: pb.ModelInferRequest, spec: TensorModel, values: Mapping[str, np.ndarray]
) -> set[str]:
    """Outputs to return: those requested by name, else text_output plus the counts asked
    for with return_num_input_tokens / return_num_output_tokens (as the TRT-LLM models do)."""
    if request.outputs:
        wanted = {o.name for o in request.outputs}
        unknown = sorted(wanted - _OUTPUT_NAMES)
        if unknown:
            raise TensorError(f"unexpected inference output '{unknown[0]}' for model '{spec.name}'")
        return wanted
    wanted = {"text_output"}
    if scalar(values, "return_num_input_tokens", False):
        wanted.add("num_input_tokens")
    if scalar(values, "return_num_output_tokens", False):
        wanted.add("num_output_tokens")
    if scalar(values, "return_perf_metrics", False):
        wanted.update(t.name for t in PERF_METRIC_OUTPUTS)
    return wanted


def build_response(
    spec: TensorModel,
    request_id: str,
    outputs: Mapping[str, str | int],
    final: bool | None = None,
) -> pb.ModelInferResponse:
    """A ModelInferResponse with raw_output_contents; ``final`` adds triton_final_response."""
    resp = pb.ModelInferResponse(model_name=spec.name, model_version=spec.version, id=request_id)
    for name in _OUTPUT_ORDER:
        value = outputs.get(name)
        if value is None:
            continue
        datatype = "BYTES" if isinstance(value, str) else _OUTPUT_DTYPES[name]
        resp.outputs.add(name=name, datatype=datatype, shape=[1, 1])
        resp.raw_output_contents.append(_packed(datatype, value))
    if final is not None:
        resp.parameters["triton_final_response"].bool_param = final
    return resp


def _packed(datatype: str, value: str | int) -> bytes:
    """One element per tensor: packed by hand (numpy costs ~10 us per tiny array, per token)."""
    if isinstance(value, str):
        encoded = value.encode("utf-8")
        return len(encoded).to_bytes(4, "little") + encoded  # Triton's length-prefixed BYTES
    return _PACK[datatype](value)


class StreamedResponses:
    """The streamed responses of one request, as `build_response` wrapped in a
    ModelStreamInferResponse makes them, for outputs whose values keep their types (text a str,
    counts ints): the model, id and tensors (names, types, shapes) are built once, and each
    response is a copy of them plus its contents (a third of the CPU, per token)."""

    def __init__(self, spec: TensorModel, request_id: str, types: Mapping[str, type]) -> None:
        self._shell = pb.ModelStreamInferResponse()
        resp = self._shell.infer_response
        resp.model_name, resp.model_version, resp.id = spec.name, spec.version, request_id
        self._tensors = tuple(
            (name, "BYTES" if types[name] is str else _OUTPUT_DTYPES[name])
            for name in _OUTPUT_ORDER
            if name in types
        )
        for name, datatype in self._tensors:
            resp.outputs.add(name=name, datatype=datatype, shape=[1, 1])

    def response(self, values: Mapping[str, str | int], final: bool | None) -> pb.ModelStreamInferResponse:
        out = pb.ModelStreamInferResponse()
        out.CopyFrom(self._shell)
        resp = out.infer_response
        resp.raw_output_contents.extend([_packed(datatype, values[name]) for name, datatype in self._tensors])
        if final is not None:
            resp.parameters["triton_final_response"].bool_param = final
        return out


def model_metadata(spec: TensorModel) -> pb.ModelMetadataResponse:
    def meta(t: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
        return pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=[-1, *t.dims])

    return pb.ModelMetadataResponse(
        name=spec.name,
        versions=[spec.version],
        platform=_platform(spec),
        inputs=[meta(t) for t in INPUTS],
        outputs=[meta(t) for t in OUTPUTS],
    )


def _platform(spec: TensorModel) -> str:
    # tensorrt_llm_bls is a Python-backend model; Triton reports its backend as the platform.
    return "ensemble" if spec.layout == "ensemble" else "python"


def tensor_config(spec: TensorModel, decoupled: bool) -> mc.ModelConfig:
    """Name, platform, batching, transaction policy and the ensemble tensors of a model."""
    cfg = mc.ModelConfig(name=spec.name, max_batch_size=spec.max_batch_size)
    if spec.layout == "ensemble":
        cfg.platform = "ensemble"
    else:
        cfg.backend = "python"
    cfg.model_transaction_policy.decoupled = decoupled
    for t in INPUTS:
        cfg.input.add(
            name=t.name, data_type=_CONFIG_TYPES[t.datatype], dims=list(t.dims), optional=t.optional
        )
    for t in OUTPUTS:
        cfg.output.add(name=t.name, data_type=_CONFIG_TYPES[t.datatype], dims=list(t.dims))
    return cfg


def model_config(spec: ConfiguredModel) -> mc.ModelConfig:
    """The config Triton would report for the ensemble / BLS model of this spec."""
    cfg = tensor_config(spec, spec.decoupled)
    if spec.layout != "ensemble":
        # BLS models take a dynamic batcher; its queue policy is where Triton keeps the bound.
        cfg.dynamic_batching.default_queue_policy.max_queue_size = spec.max_queue_size
    # The tensorrt_llm step's parameters a scheduler reads (names as in its config.pbtxt).
    params = {
        "max_queue_size": spec.max_queue_size,
        "max_num_sequences": spec.max_running_sequences,
        "batch_scheduler_policy": "guaranteed_no_evict",
        "tokens_per_block": spec.kv_block_size,
    }
    for key, value in params.items():
        cfg.parameters[key].string_value = str(value)
    return cfg
