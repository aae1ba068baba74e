"""The router's Triton dispatch against the real engine simulator (Triton's gRPC protocol)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.common.errors import InvalidArgument, Unavailable
from services.enginesim.testing import start_enginesim
from services.router.triton import TritonPool, TritonRequest

MODEL = "llama-3-8b-instruct"


@pytest.fixture
async def sim():
    handle = await start_enginesim(time_scale=200.0, load=(MODEL,))
    yield handle
    await handle.stop()


async def test_stream_returns_deltas_counts_and_final(sim):
    pool = TritonPool()
    try:
        req = TritonRequest(model=MODEL, prompt="Summarise the ledger policy", max_tokens=12, request_id="r1")
        chunks = [c async for c in pool.stream(sim.address, req, timeout=30)]
        again = [c async for c in pool.stream(sim.address, req, timeout=30)]
    finally:
        await pool.close()
    assert chunks[-1].final and sum(1 for c in chunks if c.text) >= 2
    assert max(c.output_tokens or 0 for c in chunks) == 12
    assert any((c.input_tokens or 0) > 0 for c in chunks)
    # temperature 0 is deterministic: the same prompt gives the same text
    assert "".join(c.text for c in chunks) == "".join(c.text for c in again)


async def test_unknown_model_and_dead_endpoint_are_clear_errors(sim):
    pool = TritonPool()
    try:
        with pytest.raises((Unavailable, InvalidArgument), match="nope"):
            async for _ in pool.stream(
                sim.address, TritonRequest(model="nope", prompt="x", max_tokens=2), 10
            ):
                pass
        with pytest.raises(Unavailable, match=r"backend 127\.0\.0\.1:1 failed"):
            async for _ in pool.stream(
                "127.0.0.1:1", TritonRequest(model=MODEL, prompt="x", max_tokens=2), 5
            ):
                pass
    finally:
        await pool.close()


async def test_cancelling_the_consumer_cancels_upstream(sim):
    pool = TritonPool()
    req = TritonRequest(model=MODEL, prompt="long answer please", max_tokens=2000)
    try:
        agen = pool.stream(sim.address, req, 30)
        first = await agen.__anext__()
        assert first.text
        await agen.aclose()  # the router's caller went away
        await asyncio.sleep(0.2)
        stub = pool.stub(sim.address)
        from tritonclient.grpc import service_pb2

        stats = await stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name=MODEL))
        assert stats.model_stats  # server still healthy and answering
    except grpc.aio.AioRpcError as exc:  # pragma: no cover - shows the status if the server broke
        pytest.fail(f"simulator failed: {exc}")
    finally:
        await pool.close()


async def test_a_model_that_is_not_decoupled_answers_once_without_the_prompt():
    handle = await start_enginesim(time_scale=200.0, load=("llama-3-8b-instruct-awq",))
    pool = TritonPool()
    try:
        req = TritonRequest(model="llama-3-8b-instruct-awq", prompt="Summarise the ledger", max_tokens=6)
        chunks = [c async for c in pool.stream(handle.address, req, timeout=30)]
    finally:
        await pool.close()
        await handle.stop()
    assert len(chunks) == 1 and chunks[0].final and chunks[0].output_tokens == 6
    assert chunks[0].text and not chunks[0].text.startswith("Summarise")


async def test_on_sent_comes_once_the_request_is_written_and_before_the_first_chunk(sim):
    pool = TritonPool()
    events: list[str] = []
    req = TritonRequest(model=MODEL, prompt="Summarise", max_tokens=4, on_sent=lambda: events.append("sent"))
    try:
        async for chunk in pool.stream(sim.address, req, timeout=30):
            events.append("final" if chunk.final else "chunk")
    finally:
        await pool.close()
    assert events[0] == "sent" and events.count("sent") == 1 and events[-1] == "final"


async def test_a_failing_on_sent_cancels_the_call_and_raises(sim):
    pool = TritonPool()

    def refuse() -> None:
        raise Unavailable("the call's start could not be recorded durably")

    req = TritonRequest(model=MODEL, prompt="long answer please", max_tokens=2000, on_sent=refuse)
    try:
        with pytest.raises(Unavailable, match="recorded durably"):
            async for _ in pool.stream(sim.address, req, timeout=30):
                pytest.fail("no chunk may come after a failed on_sent")
        # the simulator is still answering (the cancelled call left it healthy)
        chunks = [
            c
            async for c in pool.stream(sim.address, TritonRequest(model=MODEL, prompt="x", max_tokens=2), 30)
        ]
        assert chunks[-1].final
    finally:
        await pool.close()
