"""Router core pieces without servers: prompt rendering, version choice, Triton tensors, caches."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import numpy as np
import pytest
from harness.pool.v1 import pool_pb2
from harness.registry.v1 import registry_pb2
from tritonclient.grpc import service_pb2
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.common.ttl_cache import TtlCache
from services.router.call import Call, GenerationInput
from services.router.servicer import to_input, to_summary
from services.router.stages.admit import render_prompt
from services.router.stages.resolve import pick_version
from services.router.triton import TritonRequest, build_request, parse_response
from services.router.views import EndpointView


def test_render_prompt_needs_exactly_one_input():
    assert render_prompt(GenerationInput(prompt="hi")) == "hi"
    chat = render_prompt(GenerationInput(messages=(("system", "be brief"), ("user", "hi"))))
    assert chat.index("be brief") < chat.index("hi") and chat.endswith("<|assistant|>\n")
    with pytest.raises(InvalidArgument):
        render_prompt(GenerationInput())
    with pytest.raises(InvalidArgument):
        render_prompt(GenerationInput(prompt="a", messages=(("user", "b"),)))


def test_pick_version_follows_weights():
    agent = registry_pb2.Agent(
        name="a",
        versions=[registry_pb2.AgentVersion(version="v1"), registry_pb2.AgentVersion(version="v2")],
        traffic=[
            registry_pb2.TrafficWeight(version="v1", weight=90),
            registry_pb2.TrafficWeight(version="v2", weight=10),
        ],
    )
    counts = Counter(pick_version(agent) for _ in range(4000))
    assert set(counts) == {"v1", "v2"}
    assert 0.85 < counts["v1"] / 4000 < 0.95
    with pytest.raises(FailedPrecondition):
        pick_version(registry_pb2.Agent(name="empty"))


def test_build_request_uses_trtllm_tensors():
    msg = build_request(
        TritonRequest(model="m", prompt="héllo", max_tokens=7, temperature=0.5, seed=3, stop=("x",))
    )
    names = [t.name for t in msg.inputs]
    assert names[:3] == ["text_input", "max_tokens", "stream"]
    assert {"temperature", "seed", "stop_words"} <= set(names)
    assert msg.parameters["triton_enable_empty_final_response"].bool_param
    text = deserialize_bytes_tensor(msg.raw_input_contents[0])
    assert text.flatten()[0].decode() == "héllo"
    assert np.frombuffer(msg.raw_input_contents[1], dtype=np.int32)[0] == 7
    assert len(msg.inputs) == len(msg.raw_input_contents)


def test_parse_response_reads_delta_counts_and_final_flag():
    resp = service_pb2.ModelInferResponse(model_name="m")
    for name, dtype in (("text_output", "BYTES"), ("num_output_tokens", "INT32")):
        resp.outputs.append(
            service_pb2.ModelInferResponse.InferOutputTensor(name=name, datatype=dtype, shape=[1, 1])
        )
    resp.raw_output_contents.append(serialize_byte_tensor(np.array([[b" world"]], dtype=object)).item())
    resp.raw_output_contents.append(np.array([[5]], dtype=np.int32).tobytes())
    resp.parameters["triton_final_response"].bool_param = True
    chunk = parse_response(resp)
    assert (chunk.text, chunk.output_tokens, chunk.input_tokens, chunk.final) == (" world", 5, None, True)


async def test_ttl_cache_coalesces_concurrent_misses_and_expires():
    calls = []

    async def load(key: str) -> str:
        calls.append(key)
        await asyncio.sleep(0.01)
        return key.upper()

    cache = TtlCache(0.05, load)
    assert await asyncio.gather(*(cache.get("a") for _ in range(10))) == ["A"] * 10
    assert calls == ["a"]
    await asyncio.sleep(0.06)
    await cache.get("a")
    assert calls == ["a", "a"]


async def test_ttl_cache_does_not_cache_failures():
    attempts = 0

    async def load(_key: str) -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise Unavailable("down")
        return "ok"

    cache = TtlCache(10, load)
    with pytest.raises(Unavailable):
        await cache.get("k")
    assert await cache.get("k") == "ok"


def _endpoint(name: str, model: str, state: int, health: int, waiting: int = 0) -> pool_pb2.Endpoint:
    return pool_pb2.Endpoint(
        name=name,
        address=f"{name}:1",
        health=health,
        models=[pool_pb2.EndpointModel(name=model, state=state, waiting_requests=waiting)],
    )


async def test_endpoint_view_keeps_ready_healthy_models_and_applies_deltas():
    changes = []
    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # never dialled: state is applied directly
    view = EndpointView(channel, on_change=lambda: changes.append(1))
    healthy, ready = pool_pb2.ENDPOINT_HEALTH_HEALTHY, pool_pb2.MODEL_STATE_READY
    view.apply(
        [
            _endpoint("busy", "m", ready, healthy, waiting=5),
            _endpoint("idle", "m", ready, healthy, waiting=0),
            _endpoint("sick", "m", ready, pool_pb2.ENDPOINT_HEALTH_UNHEALTHY),
            _endpoint("loading", "m", pool_pb2.MODEL_STATE_LOADING, healthy),
        ]
    )
    assert view.ready and {c.name: c.waiting for c in view.candidates("m")} == {"busy": 5, "idle": 0}
    assert view.candidates("other") == []
    # A delta: "busy" recovers its queue, "idle" leaves the pool; the others are untouched.
    view.apply([_endpoint("busy", "m", ready, healthy, waiting=0)], removed=["idle"], snapshot=False)
    assert {c.name: c.waiting for c in view.candidates("m")} == {"busy": 0}
    assert len(changes) == 2
    await channel.close()


async def test_endpoint_view_carries_unknown_kv_use_and_the_prefix_hit_rate():
    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # never dialled: state is applied directly
    view = EndpointView(channel)
    healthy, ready = pool_pb2.ENDPOINT_HEALTH_HEALTHY, pool_pb2.MODEL_STATE_READY
    tgi, vllm = _endpoint("tgi", "m", ready, healthy), _endpoint("vllm", "m", ready, healthy)
    tgi.models[0].kv_cache_unknown = True
    vllm.models[0].prefix_cache_hit_rate = 0.0  # present and zero is not unknown
    view.apply([tgi, vllm])
    got = {c.name: (c.kv_cache_known, c.prefix_hit_rate) for c in view.candidates("m")}
    assert got == {"tgi": (False, -1.0), "vllm": (True, 0.0)}
    await channel.close()


def test_the_contract_carries_bypass_cache_in_and_cached_out():
    from harness.router.v1 import router_pb2

    assert to_input(router_pb2.GenerateRequest(prompt="p", bypass_cache=True)).bypass_cache
    assert to_input(router_pb2.CompleteRequest(prompt="p", bypass_cache=True)).bypass_cache
    assert not to_input(router_pb2.GenerateRequest(prompt="p")).bypass_cache
    assert to_summary(Call(GenerationInput(), cached="hit")).cached
    assert to_summary(Call(GenerationInput(), cached="coalesced")).cached
    assert not to_summary(Call(GenerationInput())).cached
