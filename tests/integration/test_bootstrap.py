"""The shared server bootstrap over real channels: health, reflection, error mapping, identity,
metrics and graceful stop."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.config import ServerConfig
from services.common.context import current, current_identity
from services.common.errors import NotFound, ResourceExhausted
from services.common.server import start_server
from tests.helpers.grpc import agent_metadata

SERVICE = "test.v1.Probe"


def _identity(_req: bytes, _ctx) -> bytes:
    ident = current_identity()
    return f"{ident.agent}|{ident.user}|{','.join(ident.roles)}|{current().request_id}".encode()


async def _async_identity(req, ctx):
    return _identity(req, ctx)


async def _not_found(_req, _ctx):
    raise NotFound("widget 'w1' does not exist")


async def _exhausted(_req, _ctx):
    raise ResourceExhausted("over the limit", retry_after_ms=1500)


async def _boom(_req, _ctx):
    raise ValueError("secret internal detail")


async def _slow(_req, _ctx):
    await asyncio.sleep(0.5)
    return b"done"


def _register(server: grpc.aio.Server) -> list[str]:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(fn)
        for name, fn in {
            "Identity": _async_identity,
            "NotFound": _not_found,
            "Exhausted": _exhausted,
            "Boom": _boom,
            "Slow": _slow,
        }.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    return [SERVICE]


@pytest.fixture
async def probe(test_auth):
    running = await start_server(
        ServerConfig(name="probe", port=0, metrics_port=0, auth=test_auth), _register
    )
    channel = grpc.aio.insecure_channel(running.address)
    yield running, channel
    await channel.close()
    await running.stop(0)


def _call(channel, method: str):
    return channel.unary_unary(f"/{SERVICE}/{method}")


async def test_health_and_reflection(probe):
    _, channel = probe
    resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name async for r in call for s in r.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


async def test_identity_from_xfcc_and_jwt(probe, mint_token):
    _, channel = probe
    md = (*agent_metadata("demo-agent", mint_token("alice", "admin")), ("x-request-id", "r-42"))
    call = _call(channel, "Identity")(b"", metadata=md)
    assert (await call).decode() == "demo-agent|alice|admin|r-42"
    # x-request-id is a response header (initial metadata), not a trailer.
    assert ("x-request-id", "r-42") in tuple(await call.initial_metadata())
    assert "x-request-id" not in dict(await call.trailing_metadata())


async def test_request_id_header_comes_with_errors_too(probe):
    _, channel = probe
    call = _call(channel, "NotFound")(b"", metadata=(("x-request-id", "r-nf"),))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert ("x-request-id", "r-nf") in tuple(await call.initial_metadata())


async def test_bad_token_is_unauthenticated(probe, mint_token):
    _, channel = probe
    for md in ((("authorization", "Bearer nope"),), (("authorization", "Basic abc"),)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _call(channel, "Identity")(b"", metadata=md)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(channel, "Identity")(b"", metadata=(("x-api-key", "k"),))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "API keys" in err.value.details()


async def test_domain_errors_map_to_statuses(probe):
    _, channel = probe
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(channel, "NotFound")(b"")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "widget 'w1' does not exist"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(channel, "Exhausted")(b"")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ("retry-after-ms", "1500") in tuple(err.value.trailing_metadata())


async def test_unexpected_error_is_internal_and_generic(probe, caplog):
    _, channel = probe
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(channel, "Boom")(b"", metadata=(("x-request-id", "r-boom"),))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in err.value.details() and "r-boom" in err.value.details()
    assert any("secret internal detail" in (r.exc_text or "") for r in caplog.records)


async def test_metrics_endpoint_counts_rpcs(probe):
    running, channel = probe
    await _call(channel, "Identity")(b"")
    with pytest.raises(grpc.aio.AioRpcError):
        await _call(channel, "NotFound")(b"")
    url = f"http://127.0.0.1:{running.metrics_port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2).read().decode())
    assert f'harness_rpc_requests_total{{code="OK",method="/{SERVICE}/Identity",service="probe"}} 1.0' in text
    assert f'code="NOT_FOUND",method="/{SERVICE}/NotFound"' in text


async def test_graceful_stop_finishes_inflight_and_flips_health(test_auth):
    running = await start_server(
        ServerConfig(name="probe", port=0, metrics_port=None, auth=test_auth), _register
    )
    channel = grpc.aio.insecure_channel(running.address)
    try:
        inflight = asyncio.ensure_future(_call(channel, "Slow")(b""))
        await asyncio.sleep(0.1)
        await running.stop(grace=2.0)
        assert await inflight == b"done"
    finally:
        await channel.close()
