"""A Triton whose repository protocol is restricted (PyTriton's default, Triton's
--grpc-restricted-protocol): the pool judges health by ServerReady alone, reads models from
ModelReady of its catalog's models, and with the header configured sees the whole index."""

from __future__ import annotations

import argparse
import dataclasses

import grpc
import pytest
from harness.pool.v1 import pool_pb2, pool_pb2_grpc

from services.common.config import ServerConfig
from services.devtools.certs import make_certs
from services.pool.app import serve
from services.pool.catalog import ModelSpec
from services.pool.config import add_pool_args, pool_config_from_args
from services.pool.state import GIB
from tests.helpers.fake_triton import FakeTriton
from tests.helpers.grpc import user_metadata
from tests.integration.test_pool_server import HEALTHY, READY, UNHEALTHY, endpoint, wait_for

HEADER = ("triton-grpc-protocol-triton-access-token", "s3cret")


@pytest.fixture
async def restricted():
    f = FakeTriton({"llama-trt": "READY", "other-trt": "READY"})
    f.repository_header = HEADER
    await f.start()
    yield f
    await f.close()


async def _pool(test_auth, flags: list[str]):
    parser = argparse.ArgumentParser()
    add_pool_args(parser)
    cfg = pool_config_from_args(parser.parse_args([*flags, "--no-nvml"]))
    cfg = dataclasses.replace(cfg, models=(ModelSpec("llama", "llama-trt", 10 * GIB),))
    return await serve(cfg, ServerConfig(name="pool", port=0, metrics_port=None, auth=test_auth))


@pytest.mark.parametrize("with_header", [False, True])
async def test_restricted_repository_protocol(test_auth, mint_token, restricted, with_header):
    flag = f"name=r,address={restricted.address},memory_gb=80"
    if with_header:
        flag += f",header.{HEADER[0]}={HEADER[1]}"
    running, _app = await _pool(test_auth, ["--endpoint", flag])
    md = user_metadata(mint_token("alice"))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = pool_pb2_grpc.PoolStub(channel)
            ep = await wait_for(endpoint(stub, md, "r"), lambda e: e is not None and e.health == HEALTHY)
            ep = await wait_for(endpoint(stub, md, "r"), lambda e: bool(e.models))
            states = {m.name: m.state for m in ep.models}
            if with_header:  # the whole repository
                assert states == {"llama-trt": READY, "other-trt": READY}
            else:  # what the catalog asks about
                assert states == {"llama-trt": READY}
            listed = await stub.ListEndpoints(pool_pb2.ListEndpointsRequest(), metadata=md)
            assert HEADER[1] not in str(listed)  # the secret never leaves the pool
    finally:
        await running.stop(grace=0)


def test_bad_engine_access_settings_are_refused(tmp_path):
    parser = argparse.ArgumentParser()
    add_pool_args(parser)
    for flag, words in (
        ("name=a,address=h:1,header.bad key=v", "header name"),
        ("name=a,address=h:1,ca=/nonexistent.pem,tls=true", "not a readable file"),
        ("name=a,address=h:1,header.x-bin=v", "printable ASCII"),
    ):
        with pytest.raises(ValueError, match=words):
            pool_config_from_args(parser.parse_args(["--endpoint", flag]))


async def test_tls_to_the_engine(test_auth, mint_token, tmp_path):
    """A Triton serving TLS: reached with tls=true and the CA; plaintext fails (UNHEALTHY)."""
    certs = make_certs(tmp_path / "certs", agents=["a"], services=["cli"])
    fake = FakeTriton({"llama-trt": "READY"})
    fake.tls = (certs.envoy.key.read_bytes(), certs.envoy.cert.read_bytes())  # SAN 127.0.0.1
    await fake.start()
    md = user_metadata(mint_token("alice"))
    tls = f"name=t,address={fake.address},memory_gb=80,tls=true,ca={certs.ca_cert}"
    plain = f"name=t,address={fake.address},memory_gb=80"
    try:
        for flag, healthy in ((tls, True), (plain, False)):
            running, _app = await _pool(test_auth, ["--endpoint", flag])
            try:
                async with grpc.aio.insecure_channel(running.address) as channel:
                    stub = pool_pb2_grpc.PoolStub(channel)
                    if healthy:
                        ep = await wait_for(
                            endpoint(stub, md, "t"), lambda e: e is not None and bool(e.models)
                        )
                        assert ep.health == HEALTHY
                        assert {m.name: m.state for m in ep.models} == {"llama-trt": READY}
                    else:
                        await wait_for(
                            endpoint(stub, md, "t"), lambda e: e is not None and e.health == UNHEALTHY
                        )
            finally:
                await running.stop(grace=0)
    finally:
        await fake.close()


def test_one_address_cannot_have_two_ways_in():
    parser = argparse.ArgumentParser()
    add_pool_args(parser)
    flags = ["--endpoint", "name=a,address=h:1,header.k=v", "--endpoint", "name=b,address=h:1"]
    with pytest.raises(ValueError, match="h:1"):
        pool_config_from_args(parser.parse_args(flags))
