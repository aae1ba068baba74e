"""Engine simulator over real gRPC: tritonclient's aio client, a raw stub for streams, /metrics."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor, serialize_byte_tensor

from services.enginesim.testing import EngineSimHandle, enginesim_server, write_catalog
from tests.helpers.polling import until

REPO_ROOT = Path(__file__).resolve().parents[2]
STREAM_MODEL = "sim-stream"  # decoupled ensemble
INFER_MODEL = "sim-infer"  # non-decoupled BLS
SLOW_MODEL = "sim-slow"  # 1 running + 1 queued, 50 ms real per step: for queue-full
COLD_MODEL = "sim-cold"  # not preloaded
BIG_MODEL = "sim-big"  # never fits


@pytest.fixture
async def sim(tmp_path) -> EngineSimHandle:
    catalog = write_catalog(
        tmp_path / "models.yaml",
        [
            {"name": STREAM_MODEL, "decoupled": True, "layout": "ensemble"},
            {"name": INFER_MODEL, "decoupled": False, "layout": "bls"},
            {"name": SLOW_MODEL, "decoupled": False, "max_running_sequences": 1, "max_queue_size": 1,
             "latency": {"prefill_ms_per_token": 0, "decode_ms_per_token": 0, "step_overhead_ms": 50_000}},
            {"name": COLD_MODEL, "decoupled": False, "preload": False, "memory_gb": 5, "load_time_s": 100},
            {"name": BIG_MODEL, "preload": False, "memory_gb": 30},
        ],
    )  # fmt: skip
    # 40 GB GPU, 3 x 10 GB preloaded: 10 GB free.
    async with enginesim_server(catalog_path=catalog, gpu_memory_gb=40, time_scale=1000) as handle:
        yield handle


@pytest.fixture
async def client(sim):
    c = triton_aio.InferenceServerClient(sim.address)
    yield c
    await c.close()


@pytest.fixture
async def stub(sim):
    async with grpc.aio.insecure_channel(sim.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def infer_inputs(prompt: str, max_tokens: int, **extra) -> list[triton_grpc.InferInput]:
    arrays = {
        "text_input": np.array([[prompt.encode()]], dtype=object),
        "max_tokens": np.array([[max_tokens]], dtype=np.int32),
        **extra,
    }
    types = {np.dtype(object): "BYTES", np.dtype(np.int32): "INT32", np.dtype(bool): "BOOL"}
    inputs = []
    for name, arr in arrays.items():
        tensor = triton_grpc.InferInput(name, list(arr.shape), types[arr.dtype])
        tensor.set_data_from_numpy(arr)
        inputs.append(tensor)
    return inputs


def stream_request(
    model: str,
    prompt: str | None,
    max_tokens: int,
    *,
    id: str = "",
    stream: bool = True,
    empty_final: bool = True,
    exclude_input: bool = False,
) -> pb.ModelInferRequest:
    """A hand-built request: the aio client refuses triton_* parameters."""
    req = pb.ModelInferRequest(model_name=model, id=id)
    req.parameters["triton_enable_empty_final_response"].bool_param = empty_final
    tensors = [
        ("max_tokens", "INT32", np.array([[max_tokens]], dtype=np.int32).tobytes()),
        ("stream", "BOOL", np.array([[stream]]).tobytes()),
        ("exclude_input_in_output", "BOOL", np.array([[exclude_input]]).tobytes()),
    ]
    if prompt is not None:
        raw = serialize_byte_tensor(np.array([[prompt.encode()]], dtype=object)).item()
        tensors.insert(0, ("text_input", "BYTES", raw))
    for name, datatype, raw in tensors:
        req.inputs.add(name=name, datatype=datatype, shape=[1, 1])
        req.raw_input_contents.append(raw)
    return req  # fmt: skip


async def run_stream(stub, *requests: pb.ModelInferRequest) -> list[pb.ModelStreamInferResponse]:
    async def gen():
        for r in requests:
            yield r

    return [resp async for resp in stub.ModelStreamInfer(gen())]


def text_of(resp: pb.ModelInferResponse) -> str | None:
    for i, out in enumerate(resp.outputs):
        if out.name == "text_output":
            return deserialize_bytes_tensor(resp.raw_output_contents[i])[0].decode()
    return None


def is_final(resp: pb.ModelInferResponse) -> bool:
    return resp.parameters["triton_final_response"].bool_param


# --- server, model state, repository -----------------------------------------------------
async def test_live_ready_metadata_health_and_reflection(sim, client):
    assert await client.is_server_live()
    assert await client.is_server_ready()
    meta = await client.get_server_metadata(as_json=True)
    assert meta["name"] == "triton" and "model_repository" in meta["extensions"]
    assert await client.is_model_ready(STREAM_MODEL)
    assert not await client.is_model_ready(COLD_MODEL)
    model_meta = await client.get_model_metadata(STREAM_MODEL, as_json=True)
    inputs = {t["name"]: t for t in model_meta["inputs"]}
    assert inputs["text_input"] == {"name": "text_input", "datatype": "BYTES", "shape": ["-1", "1"]}
    assert inputs["max_tokens"]["datatype"] == "INT32" and model_meta["platform"] == "ensemble"

    async with grpc.aio.insecure_channel(sim.address) as channel:
        check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        async for answer in refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        ):
            names = {s.name for s in answer.list_services_response.service}
        assert "inference.GRPCInferenceService" in names and "grpc.health.v1.Health" in names  # fmt: skip


async def test_model_config_is_a_real_triton_config(client):
    stream_cfg = (await client.get_model_config(STREAM_MODEL)).config
    assert stream_cfg.model_transaction_policy.decoupled and stream_cfg.platform == "ensemble"
    assert stream_cfg.max_batch_size == 64
    by_name = {i.name: i for i in stream_cfg.input}
    assert list(by_name["text_input"].dims) == [1] and not by_name["text_input"].optional
    assert by_name["temperature"].optional
    assert {o.name for o in stream_cfg.output} >= {"text_output", "num_input_tokens", "num_output_tokens"}
    infer_cfg = (await client.get_model_config(INFER_MODEL)).config
    assert not infer_cfg.model_transaction_policy.decoupled and infer_cfg.backend == "python"
    assert infer_cfg.parameters["max_queue_size"].string_value == "16"


async def test_unknown_model_is_not_found(client, stub):
    with pytest.raises(InferenceServerException) as err:
        await client.get_model_config("nope")
    assert err.value.status() == "StatusCode.NOT_FOUND"
    assert "Request for unknown model: 'nope' is not found" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        await client.infer("nope", infer_inputs("hi", 3))
    assert err.value.status() == "StatusCode.NOT_FOUND"
    (resp,) = await run_stream(stub, stream_request("nope", "hi", 3, id="x"))
    assert resp.error_message == "Request for unknown model: 'nope' is not found"
    assert resp.infer_response.id == "x"


async def test_repository_index_load_and_unload(client):
    index = {m["name"]: m for m in (await client.get_model_repository_index(as_json=True))["models"]}
    assert index[STREAM_MODEL]["state"] == "READY" and "state" not in index[COLD_MODEL]

    loop = asyncio.get_running_loop()
    started = loop.time()
    await client.load_model(COLD_MODEL)  # load_time_s 100 at time_scale 1000: 0.1 s
    assert loop.time() - started >= 0.09
    assert await client.is_model_ready(COLD_MODEL)
    result = await client.infer(COLD_MODEL, infer_inputs("hi", 2), request_id="r")
    assert result.get_response().id == "r"

    await client.unload_model(COLD_MODEL)  # answered while UNLOADING, as Triton does
    assert not await client.is_model_ready(COLD_MODEL)
    index = await unloaded(client, COLD_MODEL)
    assert index[COLD_MODEL]["state"] == "UNAVAILABLE" and index[COLD_MODEL]["reason"] == "unloaded"
    with pytest.raises(InferenceServerException, match="has no available versions"):
        await client.infer(COLD_MODEL, infer_inputs("hi", 2))


async def unloaded(client, *models: str) -> dict:
    """The repository index once `models` have left UNLOADING (the unload RPC returns before)."""
    for _ in range(500):
        index = {m["name"]: m for m in (await client.get_model_repository_index(as_json=True))["models"]}
        if all(index[m].get("state") != "UNLOADING" for m in models):
            return index
        await asyncio.sleep(0.01)
    raise AssertionError(f"{models} still UNLOADING")


async def test_load_fails_when_gpu_memory_is_short(sim, client):
    with pytest.raises(InferenceServerException) as err:
        await client.load_model(BIG_MODEL)  # 30 GB into 10 GB free
    assert err.value.status() == "StatusCode.INTERNAL"  # as Triton answers a failed load
    assert "not enough GPU memory to load 'sim-big': needs 30 GB, 10 GB free of 40 GB" in err.value.message()
    assert not await client.is_model_ready(BIG_MODEL)
    index = {m["name"]: m for m in (await client.get_model_repository_index(as_json=True))["models"]}
    assert (
        index[BIG_MODEL]["state"] == "UNAVAILABLE" and "not enough GPU memory" in index[BIG_MODEL]["reason"]
    )
    # Freeing memory makes the same load succeed.
    await client.unload_model(INFER_MODEL)
    await client.unload_model(SLOW_MODEL)
    await unloaded(client, INFER_MODEL, SLOW_MODEL)  # memory is free once they are UNAVAILABLE
    await client.load_model(BIG_MODEL)
    assert await client.is_model_ready(BIG_MODEL)


# --- ModelInfer -----------------------------------------------------------------------------
async def test_model_infer_on_the_non_decoupled_model(client):
    flags = {"return_num_input_tokens": np.array([[True]]), "return_num_output_tokens": np.array([[True]]),
             "exclude_input_in_output": np.array([[True]])}  # fmt: skip
    result = await client.infer(INFER_MODEL, infer_inputs("Hello there, engine.", 12, **flags))
    text = result.as_numpy("text_output")[0][0].decode()
    assert result.as_numpy("num_output_tokens")[0][0] == 12
    assert result.as_numpy("num_input_tokens")[0][0] == 5  # Hello there , engine .
    assert len(re.findall(r"\w+|[.,]", text)) == 12
    again = await client.infer(INFER_MODEL, infer_inputs("Hello there, engine.", 12, **flags))
    assert again.as_numpy("text_output")[0][0].decode() == text  # temperature 0: deterministic

    # Without exclude_input_in_output TRT-LLM echoes the prompt; counts only when asked.
    plain = await client.infer(INFER_MODEL, infer_inputs("Hello there, engine.", 12))
    assert plain.as_numpy("text_output")[0][0].decode() == "Hello there, engine." + text
    assert plain.as_numpy("num_output_tokens") is None

    stats = await client.get_inference_statistics(INFER_MODEL, as_json=True)
    model_stats = stats["model_stats"][0]
    assert model_stats["inference_count"] == "3" and int(model_stats["inference_stats"]["success"]["ns"]) > 0


async def test_model_infer_on_a_decoupled_model_is_unimplemented(client):
    with pytest.raises(InferenceServerException) as err:
        await client.infer(STREAM_MODEL, infer_inputs("hi", 3))
    assert err.value.status() == "StatusCode.UNIMPLEMENTED"
    assert "ModelInfer RPC doesn't support models with decoupled transaction policy" in err.value.message()


async def test_invalid_inputs_are_invalid_argument(client, stub):
    only_tokens = triton_grpc.InferInput("max_tokens", [1, 1], "INT32")
    only_tokens.set_data_from_numpy(np.array([[3]], dtype=np.int32))
    with pytest.raises(InferenceServerException) as err:
        await client.infer(INFER_MODEL, [only_tokens])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "missing required input(s) ['text_input']" in err.value.message()

    wrong_type = triton_grpc.InferInput("max_tokens", [1, 1], "INT64")
    wrong_type.set_data_from_numpy(np.array([[3]], dtype=np.int64))
    with pytest.raises(
        InferenceServerException, match="data-type is 'INT64', but model 'sim-infer' expects 'INT32'"
    ):
        await client.infer(INFER_MODEL, [infer_inputs("hi", 3)[0], wrong_type])
    flat = triton_grpc.InferInput("text_input", [1], "BYTES")
    flat.set_data_from_numpy(np.array([b"hi"], dtype=object))
    with pytest.raises(InferenceServerException, match=r"Expected \[-1,1\], got \[1\]"):
        await client.infer(INFER_MODEL, [flat, infer_inputs("hi", 3)[1]])

    (resp,) = await run_stream(stub, stream_request(STREAM_MODEL, None, 3, id="bad"))
    assert "missing required input(s) ['text_input']" in resp.error_message  # fmt: skip


async def test_queue_full_is_unavailable(client, stub):
    # 1 running + 1 queued; the third is rejected. 4 steps x 50 ms real each.
    first = asyncio.create_task(client.infer(SLOW_MODEL, infer_inputs("a", 4)))
    second = asyncio.create_task(client.infer(SLOW_MODEL, infer_inputs("b", 4)))
    await asyncio.sleep(0.05)
    with pytest.raises(InferenceServerException) as err:
        await client.infer(SLOW_MODEL, infer_inputs("c", 4))
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    assert "Exceeds maximum queue size" in err.value.message()
    (resp,) = await run_stream(stub, stream_request(SLOW_MODEL, "d", 4, stream=False))
    assert resp.error_message == "Exceeds maximum queue size"
    await asyncio.gather(first, second)


# --- ModelStreamInfer -----------------------------------------------------------------------
async def test_stream_deltas_join_to_the_full_text_with_an_empty_final(stub):
    responses = await run_stream(stub, stream_request(STREAM_MODEL, "Write a haiku", 8, id="s1"))
    assert all(not r.error_message and r.infer_response.id == "s1" for r in responses)
    assert len(responses) == 9  # 8 deltas + the empty final response
    assert [is_final(r.infer_response) for r in responses] == [False] * 8 + [True]
    assert not responses[-1].infer_response.outputs
    streamed = "".join(text_of(r.infer_response) for r in responses[:-1])

    (whole,) = await run_stream(
        stub,
        stream_request(STREAM_MODEL, "Write a haiku", 8, stream=False, empty_final=False, exclude_input=True),
    )
    assert is_final(whole.infer_response) and text_of(whole.infer_response) == streamed

    # Without the empty final response the last delta carries the final flag.
    responses = await run_stream(stub, stream_request(STREAM_MODEL, "Write a haiku", 8, empty_final=False))
    assert len(responses) == 8 and is_final(responses[-1].infer_response)
    assert "".join(text_of(r.infer_response) for r in responses) == streamed


async def test_concurrent_requests_on_one_stream_are_told_apart_by_id(stub):
    prompts = {"a": "first prompt", "b": "second prompt here", "c": "third"}
    requests = [stream_request(STREAM_MODEL, p, 6, id=i) for i, p in prompts.items()]
    responses = await run_stream(stub, *requests)
    deltas: dict[str, list[str]] = defaultdict(list)
    finals: dict[str, int] = defaultdict(int)
    for r in responses:
        assert not r.error_message
        if is_final(r.infer_response):
            finals[r.infer_response.id] += 1
        else:
            deltas[r.infer_response.id].append(text_of(r.infer_response))
    assert finals == {"a": 1, "b": 1, "c": 1}
    for rid, prompt in prompts.items():
        (whole,) = await run_stream(
            stub, stream_request(STREAM_MODEL, prompt, 6, stream=False, empty_final=False, exclude_input=True)
        )
        assert "".join(deltas[rid]) == text_of(whole.infer_response)


async def test_cancelling_the_stream_cancels_its_requests(sim, stub):
    engine = sim.server.sim.engine(STREAM_MODEL)
    # Real time for this engine: the 10,000 tokens take 51 s, not the 0.7 s they take at the
    # fixture's scale, which a loaded machine could spend before the cancel reaches the server.
    engine.time_scale = 1.0
    call = stub.ModelStreamInfer(iter([stream_request(STREAM_MODEL, "long", 10_000, id="long")]))
    await call.read()
    assert engine.running == 1
    call.cancel()
    await until(lambda: engine.running == 0)
    assert engine.stats.failures["CANCELED"] == 1
