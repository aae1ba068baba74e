"""`POST /v1/embeddings` through a real Envoy with mTLS, called by the official `openai` SDK and by
langchain-openai's OpenAIEmbeddings, over the engine simulator's embedding model (the front door
of test_openai_frontdoor.py, with the agent pinning the embedding model too)."""

from __future__ import annotations

import asyncio
import base64

import grpc
import httpx2
import numpy as np
import openai
import pytest
import pytest_asyncio
from langchain_openai import OpenAIEmbeddings
from tritonclient.grpc import service_pb2, service_pb2_grpc

from services.enginesim.embedder import vector
from tests.helpers.router_fakes import EMBED_DIMENSIONS, EMBED_MODEL, EMBED_TRITON_MODEL, embedding_model
from tests.integration.test_openai_frontdoor import front  # noqa: F401  (the module's front door)
from tests.integration.test_router_embeddings import embedding_agent, endpoint

pytestmark = pytest.mark.asyncio(loop_scope="module")
TEXTS = ["The ledger policy covers refunds", "Refunds follow the ledger policy"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def embed_front(front):  # noqa: F811
    async with grpc.aio.insecure_channel(front.sim_address) as channel:
        sim = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        await sim.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name=EMBED_TRITON_MODEL))
    front.registry.agent_record = embedding_agent()
    front.registry.models[EMBED_MODEL] = embedding_model()
    front.view.apply([endpoint("sim-0", front.sim_address)])
    return front


async def test_the_sdk_gets_float_vectors_usage_and_the_deployment(embed_front):
    embed_front.events.usage.clear()
    async with embed_front.client() as client:
        raw = await client.embeddings.with_raw_response.create(
            model=EMBED_MODEL,
            input=TEXTS,
            encoding_format="float",
            extra_headers={"x-harness-session-id": "s-e"},
        )
    result = raw.parse()
    assert result.object == "list" and result.model == EMBED_MODEL
    assert [d.index for d in result.data] == [0, 1] and all(d.object == "embedding" for d in result.data)
    for text, item in zip(TEXTS, result.data, strict=True):
        assert np.allclose(item.embedding, vector(text, EMBED_DIMENSIONS), atol=1e-6)
    assert result.usage.prompt_tokens == result.usage.total_tokens == 10
    assert raw.headers["x-harness-deployment"] == f"{EMBED_MODEL}@sim-0"
    [usage] = embed_front.events.usage
    assert usage.correlation.session_id == "s-e" and usage.usage.input_tokens == 10


async def test_the_sdks_default_base64_and_a_single_string_input(embed_front):
    async with embed_front.client() as client:
        default = await client.embeddings.create(model=EMBED_TRITON_MODEL, input=TEXTS[0])  # SDK asks base64
        response = await client.embeddings.with_raw_response.create(
            model=EMBED_MODEL, input=TEXTS[0], encoding_format="base64"
        )
    assert np.allclose(default.data[0].embedding, vector(TEXTS[0], EMBED_DIMENSIONS), atol=1e-6)
    raw = response.http_response.json()["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(raw), dtype="<f4")
    assert np.array_equal(decoded, vector(TEXTS[0], EMBED_DIMENSIONS))


async def test_langchain_embeds_documents_and_queries_without_token_arrays(embed_front):
    def run() -> tuple[list[list[float]], list[float]]:
        embeddings = OpenAIEmbeddings(
            model=EMBED_MODEL, base_url=embed_front.base_url, api_key=embed_front.token,
            check_embedding_ctx_length=False, max_retries=0,
            http_client=httpx2.Client(verify=embed_front.tls()),
        )  # fmt: skip
        return embeddings.embed_documents(TEXTS), embeddings.embed_query("ledger refunds")

    docs, query = await asyncio.to_thread(run)  # the servers run on this loop
    assert np.allclose(docs, [vector(t, EMBED_DIMENSIONS) for t in TEXTS], atol=1e-6)
    assert np.allclose(query, vector("ledger refunds", EMBED_DIMENSIONS), atol=1e-6)


async def test_token_arrays_are_refused_saying_what_to_do(embed_front):
    async with embed_front.client() as client:
        with pytest.raises(openai.BadRequestError) as tokens:
            await client.embeddings.create(model=EMBED_MODEL, input=[[1820, 25, 3]], encoding_format="float")
    assert tokens.value.body["param"] == "input" and tokens.value.body["code"] == "unsupported_parameter"
    assert "check_embedding_ctx_length=False" in tokens.value.message


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        (
            {"input": "a", "dimensions": 64},
            400,
            None,
            "produces 384-dimensional vectors and cannot shorten them",
        ),
        ({"input": []}, 400, "input", "empty list"),
        ({"input": ["a", ""]}, 400, "input[1]", "'input[1]' is empty"),
        ({"input": ["a"] * 2049}, 400, "input", "at most 2048"),
        ({"input": "a", "encoding_format": "int8"}, 400, "encoding_format", "Invalid value"),
        ({"input": "a", "extra": 1}, 400, "extra", "Unrecognized request argument"),
        ({"input": "a", "dimensions": "384"}, 400, "dimensions", "expected an integer, but got a string"),
        ({"input": ["a", True]}, 400, "input[1]", "expected a string, but got a boolean"),
        (
            {"input": ["a", "b\u0000"]},
            400,
            None,
            "input[1] holds a NUL character (\\u0000), which is refused",
        ),
        ({"input": "a", "model": "llama-3-8b"}, 400, None, "is a generation model"),
        ({"input": "a", "model": "text-embedding-3-small"}, 404, None, "does not exist"),
    ],
)
async def test_bad_requests_get_openais_error_bodies(embed_front, body, status, param, words):
    request = {"model": EMBED_MODEL, **body}
    async with httpx2.AsyncClient(verify=embed_front.tls()) as http:
        response = await http.post(
            f"{embed_front.base_url}/embeddings", json=request,
            headers={"authorization": f"Bearer {embed_front.token}"},
        )  # fmt: skip
    error = response.json()["error"]
    assert response.status_code == status and error["param"] == param, error
    assert words in error["message"] and error["type"] in ("invalid_request_error", "not_found_error")


async def test_a_denied_user_gets_403(embed_front):
    embed_front.registry.denied.add("agent:a1")
    try:
        async with embed_front.client() as client:
            with pytest.raises(openai.PermissionDeniedError):
                await client.embeddings.create(model=EMBED_MODEL, input="a")
    finally:
        embed_front.registry.denied.discard("agent:a1")
