"""Credentials a caller sends twice are refused at every front door, never resolved by whichever
copy a layer happens to read (an HTTP server keeps the first, a gRPC metadata dict the last,
Envoy joins the two with a comma). A request id holding other than visible ASCII is replaced,
never echoed; a session or step id holding other than visible ASCII is refused."""

from __future__ import annotations

import uuid

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


@pytest.mark.asyncio(loop_scope="module")
async def test_a_request_id_with_a_tab_or_latin_1_is_replaced_not_echoed(front):  # noqa: F811
    """httptools takes a tab and Latin-1 in a header value; the id is echoed in a response header."""
    direct = f"https://localhost:{front.http.port}/v1/models"
    auth = {"authorization": f"Bearer {front.token}"}
    async with httpx2.AsyncClient(verify=front.tls()) as http:
        answers = {
            sent: await http.get(direct, headers={**auth, "x-request-id": sent})
            for sent in (b"req\tone", b"caf\xe9", b"req-fine")
        }
    for sent, answer in answers.items():
        assert answer.status_code == 200, answer.text
        echoed = answer.headers["x-request-id"]
        if sent == b"req-fine":
            assert echoed == "req-fine"
        else:
            assert echoed != sent.decode("latin-1") and str(uuid.UUID(echoed)) == echoed


@pytest.mark.asyncio(loop_scope="module")
async def test_a_session_or_step_id_with_a_tab_latin_1_or_past_256_is_400_naming_the_header(front):  # noqa: F811
    """Lineage ids are refused, not replaced as a request id is: dropping them silently would
    hide the caller's bug from the caller until someone looks for the lineage."""
    direct = f"https://localhost:{front.http.port}/v1/models"
    auth = {"authorization": f"Bearer {front.token}", "x-request-id": "req-lineage"}
    sent = [
        ("x-harness-session-id", b"case\t1"),
        ("x-harness-step-id", b"caf\xe9"),
        ("x-harness-session-id", b"s" * 257),
    ]
    async with httpx2.AsyncClient(verify=front.tls()) as http:
        answers = [(name, await http.get(direct, headers={**auth, name: value})) for name, value in sent]
        fine = await http.get(direct, headers={**auth, "x-harness-session-id": "case-1"})
    assert fine.status_code == 200
    for name, answer in answers:
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["message"].startswith(f"the {name} header "), error
        assert error["type"] == "invalid_request_error"
        assert answer.headers["x-request-id"] == "req-lineage"
    assert "is 257 characters; the limit is 256" in answers[2][1].json()["error"]["message"]


async def test_a_session_id_with_a_space_in_grpc_metadata_is_invalid_argument(front_door):  # noqa: F811
    stub, _, md = front_door
    for bad in ("case 1", "s" * 257):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RepositoryIndex(
                pb.RepositoryIndexRequest(), metadata=(*md, ("x-harness-session-id", bad))
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (refused.value.details() or "").startswith("the x-harness-session-id header ")
    fine = (*md, ("x-harness-session-id", "case-1"), ("x-harness-step-id", "2"))
    assert (await stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=fine)).models
