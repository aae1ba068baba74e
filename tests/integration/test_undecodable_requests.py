"""Bytes that do not parse as the request message get INVALID_ARGUMENT, not UNKNOWN.

grpc.aio answers UNKNOWN ("Unexpected DecodeError") when a request deserializer raises; the
Harness interceptor makes every service's deserializer tolerant and answers for it.
"""

from __future__ import annotations

import grpc
import pytest
from harness.pool.v1 import pool_pb2

from services.common.config import ServerConfig
from services.pool.app import serve
from services.pool.config import PoolConfig
from tests.helpers.grpc import user_metadata


@pytest.fixture
async def pool_channel(test_auth):
    running, _app = await serve(
        PoolConfig(endpoints=(), nvml=False, models=()),
        ServerConfig(name="pool", port=0, metrics_port=None, auth=test_auth),
    )
    channel = grpc.aio.insecure_channel(running.address)
    yield channel
    await channel.close()
    await running.stop(grace=0)


def _raw(channel: grpc.aio.Channel, method: str):
    return channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)


GOOD = pool_pb2.PlanRequest(model="mid", replicas=1).SerializeToString()
CASES = {
    "truncated": GOOD[:-1] + b"\x0a\x40ab",  # a length prefix promising 64 bytes, 2 follow
    "invalid UTF-8 in a string": b"\x0a\x02\xff\xfe",
    "bad wire type": b"\x0f",
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_undecodable_request_is_invalid_argument(pool_channel, mint_token, case):
    call = _raw(pool_channel, "/harness.pool.v1.Pool/Plan")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(CASES[case], metadata=user_metadata(mint_token("ops", "admin")), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "not a valid protobuf message" in err.value.details()


async def test_undecodable_request_is_refused_before_authentication(pool_channel):
    """No credentials and bad bytes: still a clear INVALID_ARGUMENT or UNAUTHENTICATED, never UNKNOWN."""
    call = _raw(pool_channel, "/harness.pool.v1.Pool/Plan")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(CASES["truncated"], timeout=5)
    assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED)


async def test_nul_in_any_string_is_invalid_argument(pool_channel, mint_token):
    """PostgreSQL can neither store nor compare text holding U+0000: refused before any handler."""
    ep = pool_pb2.Endpoint(name="e1", address="127.0.0.1:9", labels={"zone": "a\x00"})
    call = _raw(pool_channel, "/harness.pool.v1.Pool/RegisterEndpoint")
    body = pool_pb2.RegisterEndpointRequest(endpoint=ep).SerializeToString()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(body, metadata=user_metadata(mint_token("ops", "admin")), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "endpoint.labels" in err.value.details() and "NUL" in err.value.details()
