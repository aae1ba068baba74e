"""Every RPC of Triton's GRPCInferenceService on the router's front door answers as Triton
would, or UNIMPLEMENTED like a Triton without the feature: never INTERNAL. A real gRPC server
with the services' interceptor, over a stand-in for the router core."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from harness.registry.v1 import registry_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg

from services.common import embedding_tensors
from services.common.config import ServerConfig
from services.common.server import start_server
from services.router.call import Call, Chunk
from services.router.chunk_interval import HEADER
from services.router.triton_facade import TritonFacadeServicer
from tests.helpers.grpc import agent_metadata
from tests.realtriton.conformance import infer_request

MODELS = [
    registry_pb2.Model(name="chat", triton_model="chat-trt"),  # served by a decoupled engine
    registry_pb2.Model(name="batch", triton_model="batch-trt"),  # served by a plain one
    registry_pb2.Model(
        name="minilm", triton_model="minilm-trt", kind=registry_pb2.MODEL_KIND_EMBEDDING, dimensions=4
    ),
]


@dataclass
class _Candidate:
    address: str


class _Endpoints:
    ready = True

    def candidates(self, triton_model: str) -> list[_Candidate]:
        return [_Candidate(f"{triton_model}-host:8001")]


class _Registry:
    ready = True


class StandInRouter:
    registry, endpoints = _Registry(), _Endpoints()

    def __init__(self) -> None:
        self.generated: list[str] = []
        self.intervals: list[int] = []  # each generation's min_chunk_interval_ms

    async def allowed_models(self, named: str = "") -> list[registry_pb2.Model]:
        return [m for m in MODELS if not named or named in (m.name, m.triton_model)]

    async def allowed_model(self, name: str) -> registry_pb2.Model | None:
        found = await self.allowed_models(name) if name else []
        return found[0] if found else None

    async def embed(self, call: Call) -> None:
        self.generated.append(f"embed:{call.inp.model}:{'|'.join(call.inp.inputs)}")
        call.vectors = np.arange(4 * len(call.inp.inputs), dtype=np.float32).reshape(-1, 4)
        call.text_tokens = tuple(len(t) for t in call.inp.inputs)

    async def run(self, call: Call):
        self.generated.append(call.inp.model)
        self.intervals.append(call.inp.min_chunk_interval_ms)
        call.text_parts.append(" done")
        yield Chunk(" done", True)


async def decoupled(address: str, triton_model: str) -> bool | None:
    return {"chat-trt-host:8001": True, "batch-trt-host:8001": False}.get(address)


@pytest.fixture
async def front_door(test_auth, mint_token):
    md = agent_metadata("bot", mint_token("alice"))
    router = StandInRouter()

    def register(server) -> list[str]:
        facade = TritonFacadeServicer(router, decoupled=decoupled)  # type: ignore[arg-type]
        pbg.add_GRPCInferenceServiceServicer_to_server(facade, server)
        return ["inference.GRPCInferenceService"]

    running = await start_server(ServerConfig(name="router", metrics_port=None, auth=test_auth), register)
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield pbg.GRPCInferenceServiceStub(channel), router, md
    await running.stop(0)


async def _code(call) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_unserved_rpcs_are_unimplemented_never_internal(front_door):
    stub, _, md = front_door
    unserved = {
        "ModelStatistics": pb.ModelStatisticsRequest(name="chat"),
        "RepositoryModelLoad": pb.RepositoryModelLoadRequest(model_name="chat"),
        "RepositoryModelUnload": pb.RepositoryModelUnloadRequest(model_name="chat"),
        "SystemSharedMemoryStatus": pb.SystemSharedMemoryStatusRequest(),
        "SystemSharedMemoryRegister": pb.SystemSharedMemoryRegisterRequest(name="x", key="/k", byte_size=8),
        "SystemSharedMemoryUnregister": pb.SystemSharedMemoryUnregisterRequest(name="x"),
        "CudaSharedMemoryStatus": pb.CudaSharedMemoryStatusRequest(),
        "CudaSharedMemoryRegister": pb.CudaSharedMemoryRegisterRequest(name="x", byte_size=8),
        "CudaSharedMemoryUnregister": pb.CudaSharedMemoryUnregisterRequest(name="x"),
        "TraceSetting": pb.TraceSettingRequest(),
        "LogSettings": pb.LogSettingsRequest(),
    }
    for rpc, request in unserved.items():
        code, details = await _code(getattr(stub, rpc)(request, metadata=md))
        assert code == grpc.StatusCode.UNIMPLEMENTED, (rpc, code, details)
        assert "not supported by the Harness front door" in details


async def test_model_config_reports_the_tensors_and_the_engines_transaction_policy(front_door):
    stub, _, md = front_door
    for name, is_decoupled in (("chat", True), ("chat-trt", True), ("batch", False)):
        config = (await stub.ModelConfig(pb.ModelConfigRequest(name=name), metadata=md)).config
        assert config.name == name and config.model_transaction_policy.decoupled is is_decoupled
        assert {i.name for i in config.input if not i.optional} == {"text_input", "max_tokens"}
    for name, version, words in (
        ("nope", "", "Request for unknown model: 'nope' is not found"),
        ("", "", "Request for unknown model: '' is not found"),
        ("chat", "7", "Request for unknown model: 'chat' version 7 is not found"),
    ):
        code = await _code(stub.ModelConfig(pb.ModelConfigRequest(name=name, version=version), metadata=md))
        assert code == (grpc.StatusCode.NOT_FOUND, words)


async def test_model_infer_refuses_as_triton_does(front_door):
    stub, router, md = front_door
    code = await _code(stub.ModelInfer(infer_request("chat"), metadata=md))
    assert code == (
        grpc.StatusCode.UNIMPLEMENTED,
        "ModelInfer RPC doesn't support models with decoupled transaction policy",
    )
    code = await _code(stub.ModelInfer(infer_request(""), metadata=md))
    assert code == (grpc.StatusCode.NOT_FOUND, "Request for unknown model: '' is not found")
    code = await _code(stub.ModelInfer(infer_request("batch", version="2"), metadata=md))
    assert code == (grpc.StatusCode.NOT_FOUND, "Request for unknown model: 'batch' version 2 is not found")
    assert router.generated == []  # none of them reached the router
    resp = await stub.ModelInfer(infer_request("batch", version="1", request_id="r-7"), metadata=md)
    assert resp.id == "r-7" and router.generated == ["batch"]
    code, _ = await _code(stub.ModelInfer(infer_request("chat"), metadata=agent_metadata("bot")))
    assert code == grpc.StatusCode.UNAUTHENTICATED  # no user token: refused before anything else


async def test_an_embedding_model_is_served_with_the_embedding_tensors(front_door):
    stub, router, md = front_door
    config = (await stub.ModelConfig(pb.ModelConfigRequest(name="minilm"), metadata=md)).config
    assert [i.name for i in config.input] == ["text_input"] and not config.model_transaction_policy.decoupled
    assert {o.name: list(o.dims) for o in config.output} == {"embedding": [4], "num_input_tokens": [1]}
    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="minilm-trt"), metadata=md)
    assert [o.name for o in meta.outputs] == ["embedding", "num_input_tokens"]
    resp = await stub.ModelInfer(
        embedding_tensors.build_request("minilm-trt", ("ab", "cde"), "r-e"), metadata=md
    )
    out = embedding_tensors.parse_response(resp, 2)
    assert resp.id == "r-e" and out.vectors.shape == (2, 4) and out.tokens == (2, 3)
    assert router.generated == ["embed:minilm-trt:ab|cde"]
    code, details = await _code(stub.ModelInfer(infer_request("minilm"), metadata=md))  # LLM tensors
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unexpected inference input" in details


async def test_a_stream_asks_for_a_minimum_chunk_interval_for_each_streamed_request(front_door):
    stub, router, md = front_door
    requests = [infer_request("chat", stream=True, request_id="s-1"), infer_request("chat", request_id="s-2")]
    answers = [r async for r in stub.ModelStreamInfer(iter(requests), metadata=(*md, (HEADER, "250")))]
    assert len(answers) == 2 and not any(a.error_message for a in answers)
    assert sorted(router.intervals) == [0, 250]  # a request not streamed answers once: nothing to merge
    # The header alone refuses the stream, before any request is read. The refused stream sends
    # none: grpc.aio reports a write the server's refusal overtook as INTERNAL "Internal error from
    # Core" instead of the server's status (about 1 in 600 refusals of a two-request stream on a
    # loaded machine).
    refused = stub.ModelStreamInfer(metadata=(*md, (HEADER, "-5")), timeout=30)  # never left open
    assert await refused.code() == grpc.StatusCode.INVALID_ARGUMENT and HEADER in await refused.details()
    assert len(router.generated) == 2  # the refused stream ran nothing


async def test_a_streamed_request_is_held_to_the_version_and_parameter_types_as_model_infer(front_door):
    stub, router, md = front_door
    wrong_type = infer_request("chat", request_id="s-p")
    wrong_type.parameters["triton_enable_empty_final_response"].string_param = "true"
    requests = [infer_request("chat", version="7", request_id="s-v"), wrong_type]
    answers = {
        a.infer_response.id: a.error_message async for a in stub.ModelStreamInfer(iter(requests), metadata=md)
    }
    assert answers == {
        "s-v": "NOT_FOUND: Request for unknown model: 'chat' version 7 is not found",
        "s-p": "INVALID_ARGUMENT: invalid value type for 'triton_enable_empty_final_response' parameter: "
        "expected bool_param, got string_param",
    }
    wrong_type.model_name = "batch"
    code = await _code(stub.ModelInfer(wrong_type, metadata=md))
    assert code[0] == grpc.StatusCode.INVALID_ARGUMENT and "expected bool_param" in code[1]
    assert router.generated == []


async def test_an_embedding_model_is_served_on_a_stream_too(front_door):
    """As Triton serves a model that is not decoupled on ModelStreamInfer: one final response;
    before, its request was read as the LLM tensors and refused for a missing max_tokens."""
    stub, router, md = front_door
    bad = embedding_tensors.build_request("minilm", ("cd",), "e-2")
    bad.raw_input_contents[0] = b"\x99\x00"  # a broken length prefix: the embedding tensors' own refusal
    requests = [embedding_tensors.build_request("minilm", ("ab",), "e-1"), bad]
    answers = {a.infer_response.id: a async for a in stub.ModelStreamInfer(iter(requests), metadata=md)}
    out = embedding_tensors.parse_response(answers["e-1"].infer_response, 1)
    assert out.vectors.shape == (1, 4) and not answers["e-1"].error_message
    assert answers["e-1"].infer_response.parameters["triton_final_response"].bool_param
    assert answers["e-2"].error_message.startswith("INVALID_ARGUMENT: ")
    assert "max_tokens" not in answers["e-2"].error_message
    assert router.generated == ["embed:minilm:ab"]
