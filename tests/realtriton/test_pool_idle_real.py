"""The pool's idle scale-to-zero on a real tritonserver: a model serving traffic is never
unloaded, whatever its idle TTL (the pool reads Triton's request counters, typed `counter`)."""

from __future__ import annotations

import asyncio

import grpc
from tritonclient.grpc import service_pb2_grpc as pbg

from services.common.config import ServerConfig
from services.pool.app import serve
from services.pool.catalog import ModelSpec
from services.pool.config import PoolConfig
from services.pool.state import GIB, EndpointSpec
from tests.realtriton.conformance import PLAIN_MODEL, eventually, index_states, infer_request

TTL_S = 1.5


async def test_a_busy_model_is_not_unloaded(test_auth, real_triton):
    spec = EndpointSpec.make("real", real_triton.address, metrics_url=real_triton.metrics_url)
    cfg = PoolConfig(
        endpoints=(spec,),
        nvml=False,
        probe_interval_s=0.2,
        idle_check_interval_s=0.2,
        models=(ModelSpec("awq", PLAIN_MODEL, 1 * GIB),),
    )
    running, app = await serve(cfg, ServerConfig(name="pool", port=0, metrics_port=None, auth=test_auth))
    try:
        await eventually(lambda: _ready(app), 30)
        view = await app.deployments.deploy("awq", 1, "tester", idle_ttl_s=TTL_S)
        assert [r.endpoint for r in view.placements] == ["real"]
        async with grpc.aio.insecure_channel(real_triton.address) as ch:
            stub = pbg.GRPCInferenceServiceStub(ch)
            loop = asyncio.get_running_loop()
            until = loop.time() + 4 * TTL_S
            while loop.time() < until:  # one request every 0.3 s: never idle for TTL_S
                await stub.ModelInfer(infer_request(PLAIN_MODEL, "keep me busy", 2))
                await asyncio.sleep(0.3)
                assert not app.deployments.get("awq").scaled_to_zero
            assert (await index_states(stub))[PLAIN_MODEL] == "READY"
        assert app.deployments.get("awq").placements  # still placed
    finally:
        await running.stop(grace=0)


async def _ready(app) -> bool:
    state = app.table.get("real")
    return state is not None and any(m.name == PLAIN_MODEL for m in state.models)
