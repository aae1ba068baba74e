"""One TRT-LLM style inference request as the simulator's servicer (server.py) sees it: the
decoded generation request and response options, the output tensors' values, and the token
chunks with a midstream fault applied."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from tritonclient.grpc import service_pb2 as pb

from services.common import triton_tensors as tensors

from .catalog import ModelSpec
from .engine import ModelEngine
from .faults import INJECTED_MIDSTREAM, Fault, InjectedInternal
from .sequence import GenerationRequest, Sequence, TokenChunk
from .simulator import Simulator


@dataclass(frozen=True)
class Prepared:
    spec: ModelSpec
    engine: ModelEngine
    gen: GenerationRequest
    outputs: set[str]
    stream: bool
    exclude_input: bool
    empty_final: bool


def prepare(sim: Simulator, request: pb.ModelInferRequest) -> Prepared:
    """Decode a TRT-LLM style request into the engine's generation request and the response's shape."""
    engine = sim.engine(request.model_name, request.model_version)
    spec = engine.spec
    values = tensors.decode_inputs(request, spec)
    for name in ("num_return_sequences", "beam_width"):
        if tensors.scalar(values, name, 1) > 1:
            raise tensors.TensorError(f"'{name}' > 1 is not supported by the engine simulator")
    max_tokens = int(tensors.scalar(values, "max_tokens"))
    end_id = tensors.scalar(values, "end_id")
    gen = GenerationRequest(
        prompt=tensors.scalar(values, "text_input", ""),
        max_tokens=max_tokens,
        seed=int(tensors.scalar(values, "seed", 0)),
        temperature=float(tensors.scalar(values, "temperature", 0.0)),
        end_id=int(end_id) if end_id is not None else None,
        stop_words=tensors.strings(values, "stop_words"),
        min_tokens=int(tensors.scalar(values, "min_tokens", 0)),
        request_id=request.id,
    )
    param = request.parameters.get("triton_enable_empty_final_response")
    return Prepared(
        spec=spec,
        engine=engine,
        gen=gen,
        outputs=tensors.select_outputs(request, spec, values),
        stream=bool(tensors.scalar(values, "stream", False)),
        exclude_input=bool(tensors.scalar(values, "exclude_input_in_output", False)),
        empty_final=bool(param is not None and param.bool_param),
    )


def response_outputs(p: Prepared, seq: Sequence, text: str, output_tokens: int) -> dict[str, str | int]:
    values: dict[str, str | int] = {
        "text_output": text,
        "num_input_tokens": seq.input_tokens,
        "num_output_tokens": output_tokens,
    }
    if "kv_cache_reused_blocks" in p.outputs:  # return_perf_metrics
        values.update(
            kv_cache_alloc_new_blocks=seq.reserved_blocks - seq.reused_blocks,
            kv_cache_reused_blocks=seq.reused_blocks,
            kv_cache_alloc_total_blocks=seq.reserved_blocks,
            arrival_time_ns=seq.arrival_time_ns,
            first_scheduled_time_ns=seq.first_scheduled_time_ns,
            first_token_time_ns=seq.first_token_time_ns,
            last_token_time_ns=seq.last_token_time_ns,
        )
    return {k: v for k, v in values.items() if k in p.outputs}


async def chunks(seq: Sequence, fault: Fault | None) -> AsyncIterator[TokenChunk]:
    """The sequence's chunks; a midstream fault ends it with an error after N tokens."""
    limit = fault.after_tokens if fault is not None and fault.kind == "midstream" else None
    if limit == 0:
        seq.fail(InjectedInternal(INJECTED_MIDSTREAM.format(n=0)))
    async for chunk in seq.stream():
        yield chunk
        if limit is not None and chunk.index >= limit and not chunk.final:
            seq.fail(InjectedInternal(INJECTED_MIDSTREAM.format(n=chunk.index)))


def full_text(p: Prepared, seq: Sequence) -> str:
    # TRT-LLM returns prompt + completion unless exclude_input_in_output is set (or streaming).
    return seq.text if p.exclude_input else p.gen.prompt + seq.text
