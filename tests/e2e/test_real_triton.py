"""The local stack against a real tritonserver: `harness up --triton real=HOST:PORT,metrics=URL`
with no simulators. Generate and the Triton front door through Envoy are served by it, the
pool CLI shows its request count rising, and a simulator registered beside it fails over to it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request

import grpc
import pytest
import tritonclient.grpc as tritongrpc
from harness.common.v1 import common_pb2
from harness.router.v1 import router_pb2, router_pb2_grpc

from services.enginesim.testing import start_enginesim
from tests.e2e.calls import bearer, demo_channel, generate, triton_client
from tests.e2e.stack import REPO, RunningStack, launch, shutdown
from tests.realtriton.conformance import DECOUPLED_MODEL, SPARE_MODEL, eventually

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def triton_stack(tmp_path_factory, real_triton) -> RunningStack:
    flag = f"real={real_triton.address},metrics={real_triton.metrics_url}"
    root = tmp_path_factory.mktemp("triton-stack") / ".harness"
    running = launch(root, time_scale=10, extra=("--triton", flag, "--no-prometheus"))
    yield running
    shutdown(running)


def harness(stack: RunningStack, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *argv, "--root", str(stack.root)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip


def endpoint_models(stack: RunningStack) -> dict[str, dict[str, dict]]:
    out = harness(stack, "endpoints", "list", "--format", "json")
    assert out.returncode == 0, out.stderr
    return {
        ep["name"]: {m["name"]: m for m in ep.get("models", [])}
        for ep in json.loads(out.stdout).get("endpoints", [])
    }


def requests_on(stack: RunningStack, endpoint: str) -> int:
    return int(endpoint_models(stack).get(endpoint, {}).get(DECOUPLED_MODEL, {}).get("requests", 0))


def test_only_the_real_triton_is_an_engine(triton_stack):
    assert triton_stack.env["HARNESS_TRITON_ADDRS"] == triton_stack.env["HARNESS_TRITON_ADDRS"].split(",")[0]
    assert triton_stack.env["HARNESS_POOL_ADDR"].startswith("127.0.0.1:")
    models = endpoint_models(triton_stack)
    assert list(models) == ["real"] and models["real"][DECOUPLED_MODEL]["state"] == "MODEL_STATE_READY"


async def test_generate_through_envoy_is_served_by_real_triton(triton_stack):
    before = requests_on(triton_stack, "real")
    md = bearer(triton_stack.token("alice"))
    async with demo_channel(triton_stack) as ch:
        for i in range(3):
            msgs = await generate(ch, md, prompt=f"Summarise ledger entry {i}", max_tokens=5)
            summary = msgs[-1].summary
            assert summary.deployment.endswith("@real") and summary.usage.output_tokens == 5
            assert "".join(m.text_delta for m in msgs).strip()

    async def rose() -> bool:
        return await asyncio.to_thread(requests_on, triton_stack, "real") >= before + 3

    await eventually(rose, 30)  # `harness endpoints list` follows real Triton's counters


async def test_a_served_model_the_catalog_did_not_name_is_mapped_in_and_served(triton_stack):
    # The demo catalog's llama-3-70b-awq is served nowhere here: `harness up` pointed it at the
    # server's model the catalog did not know, and the demo agents may ask for it by its name.
    banner = "\n".join(triton_stack.output)
    assert "catalog model llama-3-70b-awq -> your model llama-3-8b-instruct-spare" in banner
    stub = router_pb2_grpc.RouterStub
    req = router_pb2.GenerateRequest(
        prompt="Summarise the ledger", model=SPARE_MODEL, sampling=common_pb2.SamplingParams(max_tokens=3)
    )
    async with demo_channel(triton_stack) as ch:
        msgs = [
            m async for m in stub(ch).Generate(req, metadata=bearer(triton_stack.token("alice")), timeout=30)
        ]
    summary = msgs[-1].summary
    assert (summary.model, summary.deployment) == ("llama-3-70b-awq", "llama-3-70b-awq@real")
    assert summary.usage.output_tokens == 3


def test_triton_front_door_through_envoy(triton_stack):
    import numpy as np

    client = triton_client(triton_stack)
    headers = {"authorization": f"Bearer {triton_stack.token('alice')}"}
    config = client.get_model_config("llama-3-8b", headers=headers).config
    assert config.model_transaction_policy.decoupled  # as the real Triton model is
    inputs = []
    for name, arr, dtype in (
        ("text_input", np.array([[b"Stream it"]], dtype=object), "BYTES"),
        ("max_tokens", np.array([[4]], dtype=np.int32), "INT32"),
        ("stream", np.array([[True]], dtype=bool), "BOOL"),
    ):
        tensor = tritongrpc.InferInput(name, list(arr.shape), dtype)
        tensor.set_data_from_numpy(arr)
        inputs.append(tensor)
    import queue

    events: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((result, error)), headers=headers)
    client.async_stream_infer("llama-3-8b", inputs, enable_empty_final_response=True)
    deltas = []
    while True:
        result, error = events.get(timeout=30)
        assert error is None, error
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
        deltas.append(result.as_numpy("text_output").flat[0].decode())
    client.stop_stream()
    client.close()
    assert deltas and "".join(deltas).strip()


async def test_a_failing_simulator_fails_over_to_the_real_triton(triton_stack):
    """A simulator registered beside the real Triton answers every request UNAVAILABLE (its
    fault injection): the router retries on the real Triton and no call fails."""
    sim = await start_enginesim(time_scale=100, preload=False, load=(DECOUPLED_MODEL,))
    try:
        # The simulator serves from this event loop: CLI calls run in threads so it keeps answering.
        reg = await asyncio.to_thread(harness, triton_stack, "endpoints", "register", "sim-x", sim.address, "--metrics", sim.metrics_url,
                      "--gpu-type", "H100-SXM-80GB", "--gpus", "1", "--memory-gb", "80")  # fmt: skip
        assert reg.returncode == 0, reg.stderr

        async def sim_ready() -> bool:
            models = await asyncio.to_thread(endpoint_models, triton_stack)
            return models.get("sim-x", {}).get(DECOUPLED_MODEL, {}).get("state") == "MODEL_STATE_READY"

        await eventually(sim_ready, 30)
        body = json.dumps({"rate": 1.0, "kinds": ["unavailable"]}).encode()
        put = urllib.request.Request(sim.metrics_url.replace("/metrics", "/faults"), body, method="PUT")
        await asyncio.to_thread(lambda: urllib.request.urlopen(put, timeout=5).read())
        md = bearer(triton_stack.token("alice"))
        engine = sim.server.sim.engines()[DECOUPLED_MODEL]
        # At least 8 calls, and on until a router has tried the simulator: the routers learn of
        # it over their endpoint watch, and a fixed wait for that may be too short on a loaded
        # machine. Every call must be served by the real Triton all the same.
        deadline = asyncio.get_running_loop().time() + 60
        i = 0
        async with demo_channel(triton_stack) as ch:
            while i < 8 or not engine.stats.failures["BACKEND"]:
                assert asyncio.get_running_loop().time() < deadline, (
                    f"the routers never tried the simulator in {i} calls: no failover was exercised"
                )
                msgs = await generate(ch, md, prompt=f"Failover check number {i}", max_tokens=3)
                assert msgs[-1].summary.deployment.endswith("@real")
                i += 1
    finally:
        await asyncio.to_thread(harness, triton_stack, "endpoints", "deregister", "sim-x")
        await sim.stop()


def test_grpc_errors_are_not_internal(triton_stack):
    """An unknown model on the front door is Triton's NOT_FOUND, not INTERNAL."""
    client = triton_client(triton_stack)
    headers = {"authorization": f"Bearer {triton_stack.token('alice')}"}
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as err:
        client.get_model_config("nope", headers=headers)
    assert err.value.status() == str(grpc.StatusCode.NOT_FOUND)
    client.close()


def _minilm(texts: list[str]):
    """all-MiniLM-L6-v2's (vectors, word pieces per text) computed here, from the package the
    server loads."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from services.devtools.pytriton_embed import MiniLM

    return MiniLM().embed(texts)


async def test_embed_through_envoy_is_served_by_the_real_embedding_model(triton_stack, real_embedding_triton):
    import numpy as np
    from harness.router.v1 import router_pb2, router_pb2_grpc

    texts = [
        "How do I get my money back?",
        "Refunds are paid within 30 days of a return.",
        "It is sunny in Lisbon.",
    ]
    async with demo_channel(triton_stack) as ch:
        resp = await router_pb2_grpc.RouterStub(ch).Embed(
            router_pb2.EmbedRequest(inputs=texts), metadata=bearer(triton_stack.token("alice")), timeout=60
        )
    assert resp.summary.deployment == "all-minilm-l6-v2@real" and resp.summary.model == "all-minilm-l6-v2"
    vectors = np.array([e.values for e in resp.embeddings], dtype=np.float32)
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    expected, pieces = await asyncio.to_thread(_minilm, texts)
    assert np.allclose(vectors, expected, atol=1e-4)  # the real model's vectors, not a stand-in's
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.1  # meaning, not shared words
    # Billed by the model's own word pieces ([CLS] and [SEP] included), not an estimate.
    assert resp.summary.usage.input_tokens == int(pieces.sum()) and resp.summary.usage.output_tokens == 0


def test_openai_sdk_and_langchain_embed_with_the_real_model(triton_stack, real_embedding_triton):
    import ssl

    import httpx2
    import numpy as np
    import openai
    from langchain_openai import OpenAIEmbeddings

    env = triton_stack.env
    tls = ssl.create_default_context(cafile=env["HARNESS_CA"])
    tls.load_cert_chain(env["HARNESS_CERT"], env["HARNESS_KEY"])
    base, token = env["HARNESS_OPENAI_BASE_URL"], triton_stack.token("alice")
    with openai.OpenAI(
        base_url=base, api_key=token, http_client=httpx2.Client(verify=tls), max_retries=0
    ) as client:
        result = client.embeddings.create(model="all-minilm-l6-v2", input=["ledger refunds", "账户退款"])
    lc = OpenAIEmbeddings(
        model="all-minilm-l6-v2", base_url=base, api_key=token, check_embedding_ctx_length=False,
        max_retries=0, http_client=httpx2.Client(verify=tls),
    )  # fmt: skip
    query = lc.embed_query("ledger refunds")
    expected, _ = _minilm(["ledger refunds", "账户退款"])
    assert np.allclose([d.embedding for d in result.data], expected, atol=1e-4)
    assert np.allclose(query, expected[0], atol=1e-4)
    assert result.usage.prompt_tokens > 0
