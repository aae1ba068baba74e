"""Embeddings end to end on the local stack: the demo agent embeds with the demo catalog's
embedding model (served by sim-1) through Envoy, over gRPC (Router.Embed) and the OpenAI API
(`/v1/embeddings` with the openai SDK), with the same identity, policy, redaction, audit and
cost as a generation."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import grpc
import numpy as np
import pytest
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2, cost_pb2_grpc
from harness.router.v1 import router_pb2, router_pb2_grpc

from services.enginesim.embedder import vector
from tests.e2e.calls import bearer, demo_channel, triton_client
from tests.e2e.stack import REPO
from tests.e2e.test_openai_stack import _async_client, _records

pytestmark = pytest.mark.e2e
EMBED_MODEL, DIMENSIONS = "all-minilm-l6-v2", 384


async def test_grpc_embed_redacts_pii_and_is_audited_and_billed_per_input_token(stack):
    alice = stack.token("alice")
    texts = ["Refunds follow the ledger policy", "请联系客户 13812345678，核对账户"]
    async with demo_channel(stack) as channel:
        router = router_pb2_grpc.RouterStub(channel)
        call = router.Embed(router_pb2.EmbedRequest(inputs=texts), metadata=bearer(alice), timeout=30)
        resp, initial = await call, await call.initial_metadata()
        summary = resp.summary
        assert summary.model == EMBED_MODEL and summary.deployment == f"{EMBED_MODEL}@sim-1"
        vectors = np.array([e.values for e in resp.embeddings], dtype=np.float32)
        assert vectors.shape == (2, DIMENSIONS)
        assert np.allclose(vectors[0], vector(texts[0], DIMENSIONS), atol=1e-6)
        # The engine saw the masked phone number, never the number.
        assert np.allclose(vectors[1], vector("请联系客户 [PHONE]，核对账户", DIMENSIONS), atol=1e-6)
        assert summary.usage.input_tokens > 0 and summary.usage.output_tokens == 0
        assert summary.cost_micro_usd > 0  # priced per input token (and its GPU share)
        request_id = dict(initial)["x-request-id"]
        events = await _records(channel, alice, request_id, 2)
        kinds = {e.kind for e in events}
        assert {common_pb2.AUDIT_EVENT_KIND_MODEL_CALL, common_pb2.AUDIT_EVENT_KIND_REDACTION} <= kinds
        assert all("13812345678" not in str(e) for e in events)
        cost = cost_pb2_grpc.CostStub(channel)
        for _ in range(50):  # usage ships asynchronously
            report = await cost.Report(
                cost_pb2.ReportRequest(group_by=["model"]), metadata=bearer(alice), timeout=10
            )
            rows = [r for r in report.rows if r.group.get("model") == EMBED_MODEL]
            if rows and rows[0].input_tokens >= summary.usage.input_tokens:
                break
            await asyncio.sleep(0.2)
        assert rows[0].input_tokens >= summary.usage.input_tokens and rows[0].output_tokens == 0


async def test_the_openai_sdk_embeds_and_mallory_is_refused(stack):
    async with _async_client(stack) as client:
        result = await client.embeddings.create(model=EMBED_MODEL, input=["ledger", "refund policy"])
    assert [len(d.embedding) for d in result.data] == [DIMENSIONS, DIMENSIONS]
    assert np.allclose(result.data[1].embedding, vector("refund policy", DIMENSIONS), atol=1e-6)
    async with _async_client(stack, "mallory") as client:
        with pytest.raises(Exception) as denied:
            await client.embeddings.create(model=EMBED_MODEL, input="ledger")
    assert getattr(denied.value, "status_code", None) == 403
    async with demo_channel(stack) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as generation_model:
            await router_pb2_grpc.RouterStub(channel).Embed(
                router_pb2.EmbedRequest(inputs=["a"], model="llama-3-8b"),
                metadata=bearer(stack.token("alice")),
            )
    assert generation_model.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_readme_embeddings_snippet_runs_as_printed(stack):
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- openai-embeddings-snippet -->", 1)[1].split(
        "<!-- /openai-embeddings-snippet -->", 1
    )[0]
    code = block.split("```python\n", 1)[1].rsplit("```", 1)[0]
    env = {**os.environ, **stack.env, "HARNESS_TOKEN": stack.token("alice")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    count, dims, tokens = lines[0].split()
    assert (count, dims, lines[1]) == ("2", "384", "384") and int(tokens) > 0, out.stdout


def test_tritonclient_embeds_through_the_harness_triton_front_door(stack):
    import tritonclient.grpc as tritongrpc

    client = triton_client(stack)
    headers = {"authorization": f"Bearer {stack.token('alice')}"}
    try:
        config = client.get_model_config(EMBED_MODEL, headers=headers).config
        assert [o.name for o in config.output] == ["embedding", "num_input_tokens"]
        texts = np.array([[b"ledger refunds"], [b"weather in Lisbon"]], dtype=object)
        tensor = tritongrpc.InferInput("text_input", list(texts.shape), "BYTES")
        tensor.set_data_from_numpy(texts)
        result = client.infer(EMBED_MODEL, [tensor], headers=headers)
    finally:
        client.close()
    vectors = result.as_numpy("embedding")
    assert vectors.shape == (2, DIMENSIONS)
    assert np.allclose(vectors[1], vector("weather in Lisbon", DIMENSIONS), atol=1e-6)
    assert result.as_numpy("num_input_tokens").ravel().tolist() == [2, 3]
