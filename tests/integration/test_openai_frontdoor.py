"""The OpenAI HTTP front door through a real Envoy with mTLS, called by the official `openai` SDK.

Behind Envoy: the router's real core and HTTP server (TLS with the router's certificate, client
certificates required) over a real engine simulator; the registry is the in-memory stand-in of
the hot-path tests, so a test can deny a policy, set a rate limit or empty the pool.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import httpx2
import openai
import pytest
import pytest_asyncio
from harness.registry.v1 import registry_pb2
from prometheus_client import CollectorRegistry

from services.common.config import TlsFiles
from services.common.context import Identity
from services.common.errors import Unauthenticated
from services.common.http_server import HttpServer, start_http_server
from services.common.identity import AuthConfig, Authenticator, JwtVerifier, mint_jwt
from services.devtools.certs import CertBundle, make_certs
from services.enginesim.testing import start_enginesim
from services.router.chunk_interval import HEADER
from services.router.core import Router, RouterPolicy
from services.router.dispatch import Dispatcher
from services.router.flow import FlowConfig, FlowController, MemoryRateLimiter
from services.router.metrics import RouterMetrics
from services.router.openai_http.app import MAX_BODY_BYTES, OpenAIFrontDoor
from services.router.result_cache import MemoryResultCache
from services.router.scheduling import Scheduler
from services.router.stages.admit import MAX_OUTPUT_TOKENS
from services.router.triton import TritonChunk, TritonPool, TritonRequest
from services.router.views import EndpointView
from tests.helpers.envoy import EnvoyProcess, start_http_front_door_envoy
from tests.integration.test_router_hot_path import MODEL, Events, FakeRegistry, agent, endpoint

pytestmark = pytest.mark.asyncio(loop_scope="module")
API_KEY = "hk_1_alice-secret"
MESSAGES = [{"role": "user", "content": "Summarise the ledger policy"}]


@dataclass
class Front:
    certs: CertBundle
    router: Router
    envoy: EnvoyProcess
    http: HttpServer
    registry: FakeRegistry
    events: Events
    view: EndpointView
    sim_address: str
    metrics: CollectorRegistry
    token: str

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.envoy.listener_port()}/v1"

    def tls(self, who: str = "a1") -> ssl.SSLContext:
        """What an agent's HTTP client carries: its certificate, and the Harness CA to trust."""
        ctx = ssl.create_default_context(cafile=str(self.certs.ca_cert))
        leaf = self.certs.agent(who) if who in self.certs.agents else self.certs.service(who)
        ctx.load_cert_chain(str(leaf.cert), str(leaf.key))
        return ctx

    def client(self, api_key: str | None = None, **kw) -> openai.AsyncOpenAI:
        http = httpx2.AsyncClient(verify=self.tls())
        return openai.AsyncOpenAI(
            base_url=self.base_url, api_key=api_key or self.token, http_client=http, max_retries=0, **kw
        )


async def _api_key(secret: str) -> Identity:
    if secret != API_KEY:
        raise Unauthenticated("API key is not valid")
    return Identity(user="alice", auth_method="api_key", project="p")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def front(tmp_path_factory, jwt_keypair) -> AsyncIterator[Front]:
    certs = make_certs(tmp_path_factory.mktemp("certs"), agents=["a1"], services=["router", "cli"])
    sim = await start_enginesim(time_scale=1000.0)
    flow = FlowController(FlowConfig(initial_grant_interval_s=0.0))
    view = EndpointView(grpc.aio.insecure_channel("127.0.0.1:1"), on_change=flow.capacity_changed)
    view.apply([endpoint("sim-0", sim.address)])
    registry, events, metrics = FakeRegistry(agent()), Events(), CollectorRegistry()
    router = Router(
        registry, view, Dispatcher(view, Scheduler(seed=1), flow, TritonPool()), events, MemoryRateLimiter(),
        MemoryResultCache(), RouterMetrics(metrics), RouterPolicy(default_max_tokens=8, redaction_key="k"),
    )  # fmt: skip
    pub, private = jwt_keypair
    auth_cfg = AuthConfig(jwt_public_key_path=str(pub))
    auth = Authenticator(auth_cfg, JwtVerifier.from_config(auth_cfg), _api_key)
    leaf = certs.service("router")
    tls = TlsFiles(str(leaf.cert), str(leaf.key), str(certs.ca_cert))
    http = await start_http_server(OpenAIFrontDoor(router, auth, metrics).app(), "127.0.0.1", 0, tls)
    envoy = start_http_front_door_envoy(certs, http.port, tmp_path_factory.mktemp("envoy"))
    try:
        await envoy.wait_ready_async(clusters=["router_http"])
        token = mint_jwt(private, "alice")
        yield Front(certs, router, envoy, http, registry, events, view, sim.address, metrics, token)
    finally:
        envoy.stop()
        await http.stop(1)
        await sim.stop()


async def test_chat_completion_through_envoy_records_one_audit_and_one_usage_event(front):
    front.events.audit.clear(), front.events.usage.clear()
    headers = {"x-harness-session-id": "s-42", "x-harness-step-id": "step-3", "x-request-id": "req-oa-1"}
    async with front.client() as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=6, extra_headers=headers
        )
    completion = raw.parse()
    assert completion.object == "chat.completion" and completion.model == MODEL
    assert completion.choices[0].message.role == "assistant" and completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 6 and completion.usage.prompt_tokens > 0
    assert raw.headers["x-request-id"] == "req-oa-1"
    assert raw.headers["x-harness-deployment"] == f"{MODEL}@sim-0"
    assert raw.headers["x-harness-cache"] == "miss"
    [call] = [e for e in front.events.audit if e.correlation.request_id == "req-oa-1"]
    assert (call.correlation.session_id, call.correlation.step_id) == ("s-42", "step-3")
    assert call.actor.user == "alice" and call.actor.auth_method == "jwt"
    assert call.details["frontdoor"] == "openai"
    [usage] = front.events.usage
    assert usage.correlation.session_id == "s-42" and usage.usage.output_tokens == 6
    count = front.metrics.get_sample_value(
        "harness_router_requests_total", {"agent": "a1", "outcome": "OK", "frontdoor": "openai"}
    )
    assert count and count >= 1


async def test_streaming_with_usage_as_openai_emits_it(front):
    async with front.client() as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


async def test_a_minimum_chunk_interval_merges_the_streamed_deltas_and_a_bad_one_is_400(front):
    async def deltas(**headers: str) -> list[str]:
        async with front.client() as client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=6, stream=True, extra_headers=headers,
                temperature=0.7,  # sampled: not answered from the result cache
            )  # fmt: skip
            return [
                c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content
            ]

    plain = await deltas()
    merged = await deltas(**{HEADER: "1000"})
    # The first token alone (never held), then the other five with the final chunk: the
    # simulator streams the whole answer in far less than the second asked for.
    assert len(plain) == 6 and len(merged) == 2
    assert len(merged[0].split()) == 1 and len(merged[1].split()) == 5
    async with front.client() as client:
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True, extra_headers={HEADER: "soon"}
            )
    assert bad.value.status_code == 400 and HEADER in bad.value.message


async def test_sync_client_and_text_completions_with_an_api_key_as_bearer(front):
    def call() -> tuple[str, list[str]]:
        http = httpx2.Client(verify=front.tls())
        with openai.OpenAI(base_url=front.base_url, api_key=API_KEY, http_client=http, max_retries=0) as c:
            whole = c.completions.create(model=MODEL, prompt="Say hello", max_tokens=4)
            stream = c.completions.create(model=MODEL, prompt="Say hello", max_tokens=4, stream=True)
            return whole.choices[0].text, [ch.choices[0].text for ch in stream if ch.choices]

    front.events.audit.clear()
    whole, parts = await asyncio.to_thread(call)  # the servers run on this loop
    assert whole and "".join(parts)
    assert {e.actor.auth_method for e in front.events.audit} == {"api_key"}


async def test_models_are_listed_and_looked_up_by_catalog_or_engine_name(front):
    async with front.client() as client:
        listed = [m.id async for m in client.models.list()]
        by_engine_name = await client.models.retrieve("llama-3-8b-instruct")
        with pytest.raises(openai.NotFoundError) as missing:
            await client.models.retrieve("gpt-4o")
        with pytest.raises(openai.NotFoundError) as slashed:  # Hugging Face style names
            await client.models.retrieve("meta-llama/Llama-3-8B")
    assert listed == [MODEL] and by_engine_name.id == MODEL
    assert "'gpt-4o' does not exist" in missing.value.message
    assert "'meta-llama/Llama-3-8B' does not exist" in slashed.value.message


async def test_each_error_class_as_the_sdk_raises_it(front):
    async with front.client(api_key="not-a-jwt") as bad_token:
        with pytest.raises(openai.AuthenticationError) as unauthenticated:
            await bad_token.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert unauthenticated.value.status_code == 401
    assert unauthenticated.value.body["type"] == "authentication_error"
    assert "bearer token rejected" in unauthenticated.value.message
    async with front.client() as client:
        with pytest.raises(openai.NotFoundError) as unknown:
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)
        with pytest.raises(openai.BadRequestError) as long_key:  # OpenAI's limit on a metadata key
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, metadata={"k" * 65: "v"})
        with pytest.raises(openai.BadRequestError) as too_long:  # the router's limit, by OpenAI's name
            await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=MAX_OUTPUT_TOKENS + 1
            )
        front.registry.denied.add("agent:a1")
        try:
            with pytest.raises(openai.PermissionDeniedError) as denied:
                await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        finally:
            front.registry.denied.discard("agent:a1")
    assert unknown.value.body["type"] == "not_found_error"
    assert bad.value.body["param"] == "n" and "n" in bad.value.message
    assert long_key.value.body["param"] == "metadata" and "64 characters" in long_key.value.message
    assert too_long.value.body["param"] == "max_tokens" and str(MAX_OUTPUT_TOKENS) in too_long.value.message
    # The message is the gRPC path's, word for word.
    assert denied.value.body["message"] == (
        "user 'alice' may not invoke agent:a1 in project 'p'; ask a project admin for a policy (`harness policies add`)"
    )


async def test_rate_limit_is_429_with_retry_after(front):
    front.registry.agent_record.rpm_limit = 1
    # Prompts no other test sends: an answer from the result cache never reaches an engine, so
    # its request is refunded to the RPM limit and the second call would pass.
    first = [{"role": "user", "content": "rate limit probe one"}]
    second = [{"role": "user", "content": "rate limit probe two"}]
    try:
        async with front.client() as client:
            await client.chat.completions.create(model=MODEL, messages=first, max_tokens=2)
            with pytest.raises(openai.RateLimitError) as limited:
                await client.chat.completions.create(model=MODEL, messages=second, max_tokens=2)
    finally:
        front.registry.agent_record.rpm_limit = 0
    assert limited.value.status_code == 429 and limited.value.body["type"] == "rate_limit_error"
    assert int(limited.value.response.headers["retry-after"]) >= 1


async def test_no_ready_endpoint_is_503_before_the_stream_starts(front):
    front.view.apply([])
    try:
        async with front.client() as client:
            with pytest.raises(openai.InternalServerError) as unavailable:
                await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    finally:
        front.view.apply([endpoint("sim-0", front.sim_address)])
    assert unavailable.value.status_code == 503
    assert "no ready endpoint" in unavailable.value.message


async def test_malformed_and_oversized_bodies(front):
    url = front.base_url + "/chat/completions"
    auth = {"authorization": f"Bearer {front.token}", "content-type": "application/json"}
    async with httpx2.AsyncClient(verify=front.tls()) as http:
        broken = await http.post(url, headers=auth, content=b'{"model": "x", "messages": [')
        unknown = await http.post(url, headers=auth, json={"model": MODEL, "messages": MESSAGES, "foo": 1})
        image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
        part = await http.post(url, headers=auth, json={"model": MODEL, "messages": image})
        huge = await http.post(url, headers=auth, content=b" " * (MAX_BODY_BYTES + 1))

        async def blocks():  # no Content-Length: chunked, refused once past the limit
            for _ in range(MAX_BODY_BYTES // 65536 + 2):
                yield b" " * 65536

        chunked = await http.post(url, headers=auth, content=blocks())
    # The oversized bodies are answered, not reset: the server reads on before it refuses.
    assert chunked.status_code == 413 and "limit" in chunked.json()["error"]["message"]
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "foo"
    assert part.status_code == 400 and part.json()["error"]["param"] == "messages[0].content[0].type"
    assert huge.status_code == 413 and "limit" in huge.json()["error"]["message"]


async def test_xfcc_is_trusted_only_from_envoy(front):
    """A client reaching the HTTP port directly cannot claim another agent through XFCC."""
    forged = {"x-forwarded-client-cert": "URI=spiffe://harness.local/agent/evil"}
    url = f"https://localhost:{front.http.port}/v1/models/gpt-4o"
    auth = {"authorization": f"Bearer {front.token}", **forged}
    async with httpx2.AsyncClient(verify=front.tls("a1")) as as_agent:
        direct = await as_agent.get(url, headers=auth)
    async with httpx2.AsyncClient(verify=front.tls("cli")) as as_service:
        service = await as_service.get(url, headers=auth)
    assert direct.status_code == 404 and "agent 'a1'" in direct.json()["error"]["message"]
    assert service.status_code == 401 and "no agent identity" in service.json()["error"]["message"]


async def test_curl_over_http2_shows_the_event_stream(front):
    leaf = front.certs.agent("a1")
    body = json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 3, "stream": True})
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--http2", "-N", "--cacert", str(front.certs.ca_cert), "--cert", str(leaf.cert),
        "--key", str(leaf.key), "-H", f"Authorization: Bearer {front.token}",
        "-H", "Content-Type: application/json", "-d", body, "-w", "\n%{http_version}",
        front.base_url + "/chat/completions",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    events = [line for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) >= 4
    assert text.rstrip().endswith("2")  # HTTP/2 between curl and Envoy


class PiiEngine:
    """An engine whose answer carries a phone number split across chunks; keeps the prompts."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    async def stream(self, address: str, req: TritonRequest, timeout: float | None):
        self.prompts.append(req.prompt)
        for text in ("Call the client on 138", "1234", "5678 today."):
            yield TritonChunk(text, False)
        yield TritonChunk("", True, input_tokens=9, output_tokens=3)


async def test_pii_is_redacted_before_the_engine_and_in_the_streamed_answer(front):
    engine, real = PiiEngine(), front.router.dispatcher.engines["triton"]
    record = front.registry.agent_record
    record.data_policy.pii.add(kind="phone", mode=registry_pb2.MASK_MODE_MASK)
    record.revision += 1  # the router rebuilds its redactor per agent revision
    front.router.dispatcher.engines["triton"] = engine
    try:
        async with front.client() as client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "客户13912345678要退款"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    finally:
        front.router.dispatcher.engines["triton"] = real
        del record.data_policy.pii[:]
    assert "13912345678" not in engine.prompts[0] and "[PHONE]" in engine.prompts[0]
    assert "13812345678" not in text and "[PHONE]" in text and text.endswith("today.")


class SlowEngine:
    """An engine that keeps talking (a chunk every 20 ms) until it is cancelled."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    async def stream(self, address: str, req: TritonRequest, timeout: float | None):
        try:
            for i in range(500):
                yield TritonChunk(f" word{i}", False)
                await asyncio.sleep(0.02)
            yield TritonChunk("", True, input_tokens=5, output_tokens=500)
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled.set()
            raise


async def test_a_client_that_leaves_mid_stream_cancels_the_generation(front):
    engine, real = SlowEngine(), front.router.dispatcher.engines["triton"]
    front.router.dispatcher.engines["triton"] = engine
    front.events.audit.clear()
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 500, "stream": True}
    headers = {"authorization": f"Bearer {front.token}", "x-request-id": "leaves-early"}
    try:
        async with httpx2.AsyncClient(verify=front.tls()) as http:
            async with http.stream(
                "POST", front.base_url + "/chat/completions", json=body, headers=headers
            ) as resp:
                async for line in resp.aiter_lines():
                    if '"content":" word' in line:
                        break  # leave after the first words: the response is closed unread
        await asyncio.wait_for(engine.cancelled.wait(), 10)
        for _ in range(100):
            calls = [e for e in front.events.audit if e.correlation.request_id == "leaves-early"]
            if calls:
                break
            await asyncio.sleep(0.05)
    finally:
        front.router.dispatcher.engines["triton"] = real
    [call] = calls
    assert call.status == "CANCELLED"
