"""The engine simulator's OpenAI API (vLLM-flavoured) over real HTTP: the official openai client,
the router's OpenAI engine client, vLLM's metric names, errors, faults and cancellation; and
one simulator serving both protocols gives the same text for the same request."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common.errors import Unavailable
from services.enginesim.faults import FaultSettings
from services.enginesim.testing import start_enginesim
from services.router.engine import EngineRequest
from services.router.openai_engine import OpenAIEngine
from services.router.triton import TritonPool

MODEL = "llama-3-8b-instruct"


@pytest.fixture
async def sim():
    handle = await start_enginesim(time_scale=200.0, load=(MODEL,), protocol="both")
    yield handle
    await handle.stop()


def vllm_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model_name") == MODEL:
                out[s.name] = s.value
    return out


async def test_the_openai_client_streams_completions_and_chat_with_usage(sim):
    client = openai.AsyncOpenAI(base_url=f"{sim.openai_url}/v1", api_key="unused", max_retries=0)
    try:
        models = await client.models.list()
        assert MODEL in [m.id for m in models.data]
        stream = await client.completions.create(
            model=MODEL, prompt="Summarise the ledger policy", max_tokens=9, stream=True,
            stream_options={"include_usage": True}, temperature=0,
        )  # fmt: skip
        chunks = [c async for c in stream]
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 9
        assert chunks[-2].choices[0].finish_reason == "length" and text
        whole = await client.completions.create(
            model=MODEL, prompt="Summarise the ledger policy", max_tokens=9, temperature=0
        )
        assert whole.choices[0].text == text and whole.usage.prompt_tokens == chunks[-1].usage.prompt_tokens

        chat = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=5, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chat_chunks = [c async for c in chat]
        assert chat_chunks[0].choices[0].delta.role == "assistant"
        assert chat_chunks[-1].usage.completion_tokens == 5
    finally:
        await client.close()


async def test_health_models_errors_and_vllm_metric_names(sim):
    async with httpx.AsyncClient(base_url=sim.openai_url) as http:
        assert (await http.get("/health")).status_code == 200
        before = vllm_metrics((await http.get("/metrics")).text)
        missing = await http.post("/v1/completions", json={"model": "nope", "prompt": "x"})
        assert missing.status_code == 404 and "`nope` does not exist" in missing.json()["error"]["message"]
        bad = await http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 0})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
        ok = await http.post("/v1/completions", json={"model": MODEL, "prompt": "count me", "max_tokens": 4})
        assert ok.status_code == 200
        after = vllm_metrics((await http.get("/metrics")).text)
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:gpu_cache_usage_perc", "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
                 "vllm:e2e_request_latency_seconds_count"):  # fmt: skip
        assert name in after, name
    assert after["vllm:generation_tokens_total"] - before.get("vllm:generation_tokens_total", 0) == 4
    assert (
        after["vllm:e2e_request_latency_seconds_count"]
        == before["vllm:e2e_request_latency_seconds_count"] + 1
    )


async def test_the_router_engine_client_gets_the_same_text_over_both_protocols(sim):
    req = EngineRequest(model=MODEL, prompt="Summarise the ledger policy", max_tokens=12, request_id="r1")
    engine, triton = OpenAIEngine(), TritonPool()
    try:
        over_http = [c async for c in engine.stream(sim.openai_url, req, 30)]
        over_grpc = [c async for c in triton.stream(sim.address, req, 30)]
    finally:
        await engine.close()
        await triton.close()
    assert "".join(c.text for c in over_http) == "".join(c.text for c in over_grpc)
    final = over_http[-1]
    assert final.final and not final.estimated and final.output_tokens == 12
    assert final.input_tokens == max(c.input_tokens or 0 for c in over_grpc)


async def test_closing_the_stream_cancels_the_sequence_in_the_engine():
    # Its own simulator at a slow clock: 2000 tokens take seconds, so under a loaded machine the
    # sequence cannot finish on its own before the server notices the disconnect.
    slow = await start_enginesim(time_scale=5.0, load=(MODEL,), protocol="both")
    engine = OpenAIEngine()
    sim_engine = slow.server.sim.engine(MODEL)
    req = EngineRequest(model=MODEL, prompt="long answer please", max_tokens=2000)
    try:
        agen = engine.stream(slow.openai_url, req, 30)
        first = await agen.__anext__()
        assert first.text and sim_engine.running == 1
        await agen.aclose()
        deadline = asyncio.get_running_loop().time() + 20
        while sim_engine.running and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)  # the server sees the disconnect and cancels the sequence
        assert sim_engine.running == 0
        assert sim_engine.stats.failures["CANCELED"] == 1
        assert sim_engine.stats.success == 0
    finally:
        await engine.close()
        await slow.stop()


async def test_a_midstream_fault_is_an_error_event_and_unavailable_to_the_router(sim):
    sim.server.faults.settings = FaultSettings(rate=1.0, kinds=("midstream",), midstream_after_tokens=2)
    engine = OpenAIEngine()
    got: list[str] = []
    try:
        with pytest.raises(Unavailable, match="generation failed after 2 token"):
            async for chunk in engine.stream(
                sim.openai_url, EngineRequest(model=MODEL, prompt="x", max_tokens=8), 30
            ):
                got.append(chunk.text)
        sim.server.faults.settings = FaultSettings(rate=1.0, kinds=("unavailable",))
        with pytest.raises(Unavailable, match="HTTP 503"):
            async for _ in engine.stream(
                sim.openai_url, EngineRequest(model=MODEL, prompt="x", max_tokens=8), 30
            ):
                pass
    finally:
        await engine.close()
    assert len(got) == 2


async def test_openai_only_serves_no_grpc():
    handle = await start_enginesim(time_scale=200.0, load=(MODEL,), protocol="openai")
    try:
        assert handle.server.server is None and handle.port == 0
        assert "grpc=off" in handle.server.where()
        async with httpx.AsyncClient(base_url=handle.openai_url) as http:
            assert (await http.get("/v1/models")).json()["data"][0]["id"] == MODEL
    finally:
        await handle.stop()


async def test_finished_streams_reuse_one_connection(sim):
    # Closing a response before its body's end drops the connection: every request paid a TCP
    # connect (and the router's CPU for it). Read to the end (in the background, after [DONE],
    # unless it came with it), the pool keeps its connections: a call that starts while the last
    # one's end is still being read may open a second one, never one per request. The
    # connections are counted by a TCP relay in front of the simulator.
    async with CountingRelay(sim.openai_url) as relay:
        engine = OpenAIEngine()
        req = EngineRequest(model=MODEL, prompt="hello", max_tokens=4)
        calls = 10
        try:
            for _ in range(calls):
                chunks = [c async for c in engine.stream(relay.url, req, 30)]
                assert chunks[-1].final
            assert 1 <= relay.accepted <= 2, relay.accepted  # none dropped
        finally:
            await engine.close()


class CountingRelay:
    """A TCP relay on port 0 to an HTTP server, counting the connections it accepts."""

    def __init__(self, url: str) -> None:
        self.upstream = url.removeprefix("http://").rsplit(":", 1)
        self.accepted = 0
        self.url = ""
        self._pipes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> CountingRelay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection(self.upstream[0], int(self.upstream[1]))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except ConnectionError:
            pass
        finally:
            dst.close()
