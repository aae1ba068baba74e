"""The pool over an OpenAI-protocol engine (the simulator speaking vLLM's API): readiness and
models from /health and /v1/models, load from vLLM's metric names, the kind and flavour
reported to routers, and a fixed deployment: a Deploy counts it and never loads or unloads."""

from __future__ import annotations

import argparse
import dataclasses

import grpc
import httpx
import pytest
from harness.pool.v1 import pool_pb2, pool_pb2_grpc

from services.common.config import ServerConfig
from services.enginesim.testing import start_enginesim
from services.pool.app import serve
from services.pool.catalog import ModelSpec
from services.pool.config import add_pool_args, pool_config_from_args
from services.pool.state import GIB
from tests.helpers.grpc import user_metadata
from tests.integration.test_pool_server import HEALTHY, READY, endpoint, wait_for

MODEL = "llama-3-8b-instruct"


@pytest.fixture
async def vllm_sim():
    handle = await start_enginesim(time_scale=200.0, load=(MODEL,), protocol="openai", preload=False)
    yield handle
    await handle.stop()


async def _pool(test_auth, flags: list[str]):
    parser = argparse.ArgumentParser()
    add_pool_args(parser)
    cfg = pool_config_from_args(parser.parse_args([*flags, "--no-nvml"]))
    cfg = dataclasses.replace(cfg, models=(ModelSpec("llama", MODEL, 10 * GIB),))
    return await serve(cfg, ServerConfig(name="pool", port=0, metrics_port=None, auth=test_auth))


async def test_an_openai_endpoint_is_probed_reported_and_never_loaded(test_auth, mint_token, vllm_sim):
    url = vllm_sim.openai_url
    flag = f"name=v,kind=openai,flavour=vllm,address={url},metrics={url}/metrics,memory_gb=80,header.authorization=Bearer k"
    running, _app = await _pool(test_auth, ["--endpoint", flag])
    md = user_metadata(mint_token("alice", "admin"))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = pool_pb2_grpc.PoolStub(channel)
            ep = await wait_for(endpoint(stub, md, "v"), lambda e: e is not None and e.health == HEALTHY)
            ep = await wait_for(endpoint(stub, md, "v"), lambda e: bool(e.models))
            assert (ep.kind, ep.flavour, ep.address) == ("openai", "vllm", url)
            assert [(m.name, m.state) for m in ep.models] == [(MODEL, READY)]
            listed = await stub.ListEndpoints(pool_pb2.ListEndpointsRequest(), metadata=md)
            assert "Bearer k" not in str(listed)  # the header is a secret: never listed
            # Load comes from vLLM's metric names: a finished request moves the request count.
            async with httpx.AsyncClient(base_url=url) as http:
                done = await http.post(
                    "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 3}
                )
                assert done.status_code == 200
            ep = await wait_for(endpoint(stub, md, "v"), lambda e: e.models[0].requests >= 1)
            assert ep.models[0].active_requests == 0 and ep.models[0].waiting_requests == 0
            assert not ep.models[0].kv_cache_unknown  # vLLM exports its KV use
            # A repeated long prompt is found in the engine's prefix cache: vLLM's hit counters
            # become the hit rate routers weigh prefix affinity with.
            async with httpx.AsyncClient(base_url=url) as http:
                for _ in range(2):
                    body = {"model": MODEL, "prompt": "the general ledger " * 200, "max_tokens": 2}
                    assert (await http.post("/v1/completions", json=body)).status_code == 200
            ep = await wait_for(
                endpoint(stub, md, "v"),
                lambda e: (
                    e.models[0].HasField("prefix_cache_hit_rate") and e.models[0].prefix_cache_hit_rate > 0
                ),
            )
            assert ep.models[0].prefix_cache_hit_rate <= 1.0
            dep = await stub.Deploy(pool_pb2.DeployRequest(model="llama", replicas=1), metadata=md)
            assert [p.endpoint for p in dep.deployment.placements] == ["v"]
            await stub.Undeploy(pool_pb2.UndeployRequest(model="llama"), metadata=md)
        # Undeploy left the model serving there: a fixed deployment is never unloaded.
        assert vllm_sim.server.sim.is_ready(MODEL)
    finally:
        await running.stop(grace=0)


async def test_an_openai_endpoint_that_is_not_ready_is_unhealthy(test_auth, mint_token):
    handle = await start_enginesim(time_scale=200.0, load=(MODEL,), protocol="openai", preload=False)
    url = handle.openai_url
    handle.server.sim.ready = False  # /health answers 503, as vLLM does while starting
    running, _app = await _pool(test_auth, ["--endpoint", f"name=v,kind=openai,address={url}"])
    md = user_metadata(mint_token("alice"))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = pool_pb2_grpc.PoolStub(channel)
            ep = await wait_for(endpoint(stub, md, "v"), lambda e: e is not None and e.health != 0)
            assert ep.health != HEALTHY
            handle.server.sim.ready = True
            await wait_for(endpoint(stub, md, "v"), lambda e: e.health == HEALTHY)
    finally:
        await running.stop(grace=0)
        await handle.stop()


def test_bad_openai_endpoints_are_refused():
    parser = argparse.ArgumentParser()
    add_pool_args(parser)
    for flag, words in (
        ("name=a,kind=openai,address=h:1", "base URL"),
        ("name=a,kind=openai,flavour=llamacpp,address=http://h:1", "flavour must be one of"),
        ("name=a,kind=grpc,address=h:1", "kind must be one of"),
        ("name=a,flavour=vllm,address=h:1", "a triton endpoint has none"),
    ):
        with pytest.raises(ValueError, match=words):
            pool_config_from_args(parser.parse_args(["--endpoint", flag]))
