"""The router reaches a real tritonserver the way the pool does: over TLS with the endpoint's
roots, sending the endpoint's headers (a Triton whose inference and model-config protocols are
restricted wants `triton-grpc-protocol-triton-access-token`). Without them it is refused."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest
from tritonclient.grpc import service_pb2

from services.common.errors import Unavailable
from services.devtools.certs import make_certs
from services.router.engine import EngineRequest
from services.router.engine_access import NO_ACCESS, EndpointAccess
from services.router.triton import TritonPool
from tests.helpers.realtriton import ACCESS_HEADER, RealTritonUnavailable, start_real_triton
from tests.realtriton.conformance import DECOUPLED_MODEL

TOKEN = "router-test-token"


@pytest.fixture(scope="module")
def locked_triton(tmp_path_factory):
    """A second real tritonserver: gRPC over TLS, inference and model-config behind a token."""
    certs = make_certs(tmp_path_factory.mktemp("engine-certs"), services=("engine",), agents=())
    leaf = certs.services["engine"]
    try:
        server = start_real_triton(
            restrict="inference,model-config",
            access_token=TOKEN,
            tls=(str(leaf.cert), str(leaf.key), str(certs.ca_cert)),
        )
    except RealTritonUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"a real tritonserver is required in CI (CI=true): {exc}")
        pytest.skip(f"a real tritonserver could not start: {exc}")
    try:
        yield server, str(certs.ca_cert)
    finally:
        server.stop()


async def generate(pool: TritonPool, address: str) -> tuple[str, int | None]:
    req = EngineRequest(model=DECOUPLED_MODEL, prompt="the ledger balance", max_tokens=4, request_id="r1")
    text, tokens = "", None
    async for chunk in pool.stream(address, req, timeout=30.0):
        text += chunk.text
        tokens = chunk.output_tokens if chunk.output_tokens is not None else tokens
    return text, tokens


async def test_the_endpoints_headers_and_tls_reach_a_locked_triton(locked_triton):
    server, ca = locked_triton
    access = EndpointAccess(headers=((ACCESS_HEADER, TOKEN),), ca_file=ca, tls=True)
    pool = TritonPool(lambda address: access if address == server.address else NO_ACCESS)
    try:
        assert await pool.decoupled(server.address, DECOUPLED_MODEL) is True  # ModelConfig got through
        text, tokens = await generate(pool, server.address)
        assert text and tokens == 4  # streamed token by token, counted by the engine
    finally:
        await pool.close()


async def test_without_the_token_or_tls_the_router_is_refused(locked_triton):
    server, ca = locked_triton
    no_token = TritonPool(lambda _address: EndpointAccess(ca_file=ca, tls=True))
    plaintext = TritonPool(lambda _address: EndpointAccess(headers=((ACCESS_HEADER, TOKEN),)))
    try:
        # A unary call shows Triton's own reason: the protocol wants the token.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await no_token.stub(server.address).ModelConfig(
                service_pb2.ModelConfigRequest(name=DECOUPLED_MODEL), timeout=10.0
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "expecting header" in refused.value.details()
        assert await no_token.decoupled(server.address, DECOUPLED_MODEL) is None
        # The stream is refused too, but its status may not reach the client: when a server ends a
        # bidirectional call while the client is still writing, grpc.aio reports INTERNAL "Internal
        # error from Core" instead (one CI run saw it). Either way the router gets no tokens.
        with pytest.raises(Unavailable, match=r"expecting header|Internal error from Core"):
            await generate(no_token, server.address)
        with pytest.raises(Unavailable):
            await asyncio.wait_for(generate(plaintext, server.address), 60)
    finally:
        await no_token.close()
        await plaintext.close()
