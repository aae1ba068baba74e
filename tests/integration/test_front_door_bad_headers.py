"""Credentials a caller sends twice are refused at every front door, never resolved by whichever
copy a layer happens to read (an HTTP server keeps the first, a gRPC metadata dict the last,
Envoy joins the two with a comma)."""

from __future__ import annotations

import grpc
import httpx2
import pytest
from tritonclient.grpc import service_pb2 as pb

from tests.integration.test_openai_frontdoor import front  # noqa: F401 (the fixture)
from tests.integration.test_router_triton_frontdoor import front_door  # noqa: F401 (the fixture)


@pytest.mark.asyncio(loop_scope="module")  # the OpenAI fixture lives for the module
async def test_two_authorization_headers_are_401_directly_and_through_envoy(front):  # noqa: F811
    headers = [("authorization", f"Bearer {front.token}"), ("authorization", "Bearer hk_1_other")]
    direct = f"https://localhost:{front.http.port}/v1/models"
    async with httpx2.AsyncClient(verify=front.tls()) as http:
        at_router = await http.get(direct, headers=headers)
        through_envoy = await http.get(front.base_url + "/models", headers=headers)
        single = await http.get(direct, headers=headers[:1])
    assert single.status_code == 200
    assert at_router.status_code == 401, at_router.text
    assert (
        at_router.json()["error"]["message"]
        == "the authorization header is sent more than once: send it once"
    )
    assert at_router.json()["error"]["type"] == "authentication_error"
    assert through_envoy.status_code == 401, through_envoy.text
    assert "more than one credential" in through_envoy.json()["error"]["message"]


async def test_two_authorization_values_in_grpc_metadata_are_unauthenticated(front_door):  # noqa: F811
    stub, _, md = front_door
    twice = (*md, ("authorization", "Bearer hk_1_other"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=twice)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization header is sent more than once" in (refused.value.details() or "")
    assert (await stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=md)).models
