"""The embedding contract (services/common/embedding_tensors.py) on the engine simulator and on a
real tritonserver serving all-MiniLM-L6-v2 through PyTriton: the same config, the same answer
shapes, the same refusals, and the router's Triton engine reads both alike."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg

from services.common import embedding_tensors as et
from services.common.errors import InvalidArgument
from services.devtools.pytriton_embed import DIMENSIONS, EMBEDDING_MODEL, MAX_BATCH_SIZE
from services.enginesim.testing import start_enginesim
from services.router.engine import EmbeddingRequest
from services.router.triton import TritonPool

TEXTS = ("How do I get my money back?", "Refunds are paid within 30 days.", "It is sunny in Lisbon.")


@pytest.fixture(params=["simulator", "real"])
async def address(request):
    if request.param == "real":
        yield request.getfixturevalue("real_embedding_triton").address
        return
    sim = await start_enginesim(
        time_scale=1000, preload=False, load=(EMBEDDING_MODEL, "llama-3-8b-instruct-awq")
    )
    try:
        yield sim.address
    finally:
        await sim.stop()


async def test_config_declares_the_embedding_tensors(address):
    async with grpc.aio.insecure_channel(address) as channel:
        config = (await pbg.GRPCInferenceServiceStub(channel).ModelConfig(
            pb.ModelConfigRequest(name=EMBEDDING_MODEL), timeout=10
        )).config  # fmt: skip
    assert config.max_batch_size == MAX_BATCH_SIZE and not config.model_transaction_policy.decoupled
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        (et.TEXT_INPUT, mc.TYPE_STRING, [1])
    ]
    outputs = {t.name: (t.data_type, list(t.dims)) for t in config.output}
    assert outputs == {et.EMBEDDING: (mc.TYPE_FP32, [DIMENSIONS]), et.NUM_INPUT_TOKENS: (mc.TYPE_INT32, [1])}


async def test_a_batch_gets_unit_vectors_and_token_counts(address):
    async with grpc.aio.insecure_channel(address) as channel:
        resp = await pbg.GRPCInferenceServiceStub(channel).ModelInfer(
            et.build_request(EMBEDDING_MODEL, TEXTS, "conf-e1"), timeout=60
        )
    out = et.parse_response(resp, len(TEXTS))
    assert out.vectors.shape == (3, DIMENSIONS) and resp.id == "conf-e1"
    assert np.allclose(np.linalg.norm(out.vectors, axis=1), 1.0, atol=1e-4)
    assert out.tokens is not None and all(n >= 5 for n in out.tokens)
    again = None
    async with grpc.aio.insecure_channel(address) as channel:
        again = await pbg.GRPCInferenceServiceStub(channel).ModelInfer(
            et.build_request(EMBEDDING_MODEL, TEXTS[:1]), timeout=60
        )
    assert np.allclose(et.parse_response(again, 1).vectors[0], out.vectors[0], atol=1e-5)  # deterministic


async def test_a_batch_over_max_batch_size_is_invalid_argument(address):
    texts = tuple(f"text {i}" for i in range(MAX_BATCH_SIZE + 1))
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pbg.GRPCInferenceServiceStub(channel).ModelInfer(
                et.build_request(EMBEDDING_MODEL, texts), timeout=60
            )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"must be <= {MAX_BATCH_SIZE}" in err.value.details()


async def test_the_router_engine_splits_large_batches_and_maps_refusals(address):
    pool = TritonPool()
    try:
        texts = tuple(f"ledger entry {i}" for i in range(MAX_BATCH_SIZE * 2 + 3))
        result = await pool.embed(address, EmbeddingRequest(EMBEDDING_MODEL, texts, "conf-e2"), timeout=120)
        assert result.vectors.shape == (len(texts), DIMENSIONS) and not result.estimated
        with pytest.raises(InvalidArgument, match="rejected the request"):  # not retryable elsewhere
            await pool.embed(address, EmbeddingRequest("llama-3-8b-instruct-awq", ("a",)), timeout=30)
    finally:
        await pool.close()
