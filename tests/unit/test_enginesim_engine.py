"""Engine simulator core: catalog, tokenizer, continuous batching, queue bound, KV, cancellation.

Durations are checked in simulated time (deterministic); time_scale keeps the real time tiny.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re

import pytest

from services.enginesim.catalog import (
    DEFAULT_CATALOG_PATH,
    CatalogError,
    LatencyProfile,
    ModelSpec,
    load_catalog,
    parse_catalog,
)
from services.enginesim.engine import ModelEngine
from services.enginesim.sequence import (
    QUEUE_FULL_MESSAGE,
    GenerationRequest,
    InvalidRequestError,
    QueueFullError,
    RequestCancelledError,
)
from services.enginesim.text import VOCAB, count_tokens

FAST = 10_000.0  # simulated time runs 10,000x faster: a 5 ms step takes 0.5 us


def make_spec(**overrides) -> ModelSpec:
    base = ModelSpec(
        name="m",
        decoupled=True,
        layout="ensemble",
        memory_gb=10,
        load_time_s=1,
        latency=LatencyProfile(prefill_ms_per_token=0.5, decode_ms_per_token=1.0, step_overhead_ms=5.0),
        max_running_sequences=4,
        max_queue_size=8,
        kv_block_size=16,
        kv_capacity_blocks=1000,
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture
async def make_engine():
    engines: list[ModelEngine] = []

    def factory(**overrides) -> ModelEngine:
        engine = ModelEngine(make_spec(**overrides), time_scale=FAST)
        engine.start()
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        await engine.stop()


# --- catalog and tokenizer ----------------------------------------------------------------
def test_default_catalog_ships_a_decoupled_ensemble_and_a_non_decoupled_model():
    catalog = load_catalog()
    assert catalog.source == str(DEFAULT_CATALOG_PATH)
    llama = catalog.get("llama-3-8b-instruct")
    awq = catalog.get("llama-3-8b-instruct-awq")
    assert llama is not None and llama.decoupled and llama.layout == "ensemble" and llama.preload
    assert awq is not None and not awq.decoupled
    assert llama.memory_gb + awq.memory_gb <= 80  # both fit on the default simulated GPU


def test_catalog_errors_name_the_model_and_field():
    good = {"name": "x", "decoupled": True, "layout": "ensemble", "memory_gb": 1, "load_time_s": 0,
            "latency": {"prefill_ms_per_token": 0.1, "decode_ms_per_token": 0.1, "step_overhead_ms": 1},
            "max_running_sequences": 1, "max_queue_size": 0, "kv_block_size": 16,
            "kv_capacity_blocks": 10}  # fmt: skip
    assert parse_catalog({"models": [good]}).get("x").max_batch_size == 64
    with pytest.raises(CatalogError, match=r"models\[0\] \(x\): missing required field 'memory_gb'"):
        parse_catalog({"models": [{k: v for k, v in good.items() if k != "memory_gb"}]})
    with pytest.raises(CatalogError, match="'layout' must be one of"):
        parse_catalog({"models": [{**good, "layout": "pipeline"}]})
    with pytest.raises(CatalogError, match="'max_running_sequences' must be >= 1"):
        parse_catalog({"models": [{**good, "max_running_sequences": 0}]})
    with pytest.raises(CatalogError, match="unknown field"):
        parse_catalog({"models": [{**good, "max_tokenz": 3}]})
    with pytest.raises(CatalogError, match="listed twice"):
        parse_catalog({"models": [good, good]})
    with pytest.raises(CatalogError, match="cannot read model catalog"):
        load_catalog("/nonexistent/models.yaml")


def test_tokenizer_counts_words_and_punctuation():
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("") == 1  # the BOS token
    assert count_tokens("one two  three\nfour") == 4


# --- batching, queue, step time ------------------------------------------------------------
async def test_batching_admits_up_to_max_running_and_queues_the_rest(make_engine):
    engine = make_engine(max_running_sequences=2, max_queue_size=10)
    seqs = [engine.submit(GenerationRequest(f"prompt {i}", max_tokens=5)) for i in range(5)]
    assert (engine.running, engine.waiting) == (2, 3)
    texts = await asyncio.gather(*(s.collect() for s in seqs))
    assert all(s.output_tokens == 5 for s in seqs)
    assert all(len(count_tokens_of(t)) == 5 for t in texts)
    # Two at a time, 5 tokens each: 5 steps for A+B, 5 for C+D, 5 for E; never a wider batch.
    assert engine.stats.execution_count == 15
    assert engine.stats.success == 5
    assert seqs[4].admitted_ms > 0 and seqs[0].admitted_ms == 0
    assert engine.stats.queue_ns > 0
    assert (engine.running, engine.waiting, engine.kv_blocks_used) == (0, 0, 0)


def count_tokens_of(text: str) -> list[str]:
    """Split generated text back into its vocabulary tokens."""
    return re.findall(r"\w+|[.,]", text)


async def test_queue_bound_rejects_with_tritons_message(make_engine):
    engine = make_engine(max_running_sequences=1, max_queue_size=2)
    accepted = [engine.submit(GenerationRequest("p", max_tokens=3)) for _ in range(3)]
    assert (engine.running, engine.waiting) == (1, 2)
    with pytest.raises(QueueFullError) as err:
        engine.submit(GenerationRequest("p", max_tokens=3))
    assert str(err.value) == QUEUE_FULL_MESSAGE == "Exceeds maximum queue size"
    assert engine.stats.failures["REJECTED"] == 1
    await asyncio.gather(*(s.collect() for s in accepted))
    engine.submit(GenerationRequest("p", max_tokens=1))  # room again once the queue drained


def test_step_time_formula():
    engine = ModelEngine(make_spec())
    assert engine.step_time_ms(batch=1, prefill_tokens=0) == pytest.approx(6.0)
    assert engine.step_time_ms(batch=8, prefill_tokens=0) == pytest.approx(13.0)
    assert engine.step_time_ms(batch=1, prefill_tokens=100) == pytest.approx(56.0)


async def test_step_time_grows_with_prompt_tokens_and_batch(make_engine):
    short_engine, long_engine = make_engine(), make_engine()
    short = short_engine.submit(GenerationRequest("word " * 10, max_tokens=1))
    long = long_engine.submit(GenerationRequest("word " * 1000, max_tokens=1))
    await short.collect()
    await long.collect()
    # One prefill step each: 5 + 1*1 + 0.5*tokens ms.
    assert short_engine.stats.compute_ns == pytest.approx((6 + 0.5 * 10) * 1e6)
    assert long_engine.stats.compute_ns == pytest.approx((6 + 0.5 * 1000) * 1e6)

    solo_engine, crowd_engine = make_engine(), make_engine()
    await solo_engine.submit(GenerationRequest("x", max_tokens=10)).collect()
    crowd = [crowd_engine.submit(GenerationRequest("x", max_tokens=10)) for _ in range(4)]
    await asyncio.gather(*(s.collect() for s in crowd))
    # Same number of steps; each decode step costs 1 ms more per extra running sequence.
    assert solo_engine.stats.execution_count == crowd_engine.stats.execution_count == 10
    assert crowd_engine.sim_now_ms - solo_engine.sim_now_ms == pytest.approx(10 * 3 * 1.0 + 3 * 0.5)


# --- text ----------------------------------------------------------------------------------
async def test_text_is_deterministic(make_engine):
    engine = make_engine()

    async def run(prompt: str, **kw) -> str:
        return await engine.submit(GenerationRequest(prompt, max_tokens=20, **kw)).collect()

    greedy = await run("Tell me a story")
    assert greedy == await run("Tell me a story")
    assert greedy == await run("Tell me a story", seed=7)  # greedy ignores the seed
    assert greedy != await run("Tell me another story")
    sampled = await run("Tell me a story", temperature=0.8, seed=1)
    assert sampled == await run("Tell me a story", temperature=0.8, seed=1)
    assert sampled != await run("Tell me a story", temperature=0.8, seed=2)
    assert greedy.startswith(" ") and len(count_tokens_of(greedy)) == 20


async def test_stream_chunks_join_to_the_text_and_the_last_is_final(make_engine):
    engine = make_engine()
    seq = engine.submit(GenerationRequest("hello", max_tokens=6))
    chunks = [c async for c in seq.stream()]
    assert [c.index for c in chunks] == [1, 2, 3, 4, 5, 6]
    assert [c.final for c in chunks] == [False] * 5 + [True]
    assert chunks[-1].finish_reason == "length"
    assert "".join(c.text for c in chunks) == seq.text


async def test_stop_words_and_end_id_end_generation_early(make_engine):
    engine = make_engine()
    full = engine.submit(GenerationRequest("stop test", max_tokens=30))
    chunks = [c async for c in full.stream()]
    third = chunks[2]
    # The first occurrence of the third token decides where generation stops.
    first_at = next(i for i, c in enumerate(chunks) if c.token_id == third.token_id)

    by_id = engine.submit(GenerationRequest("stop test", max_tokens=30, end_id=third.token_id))
    by_id_chunks = [c async for c in by_id.stream()]
    assert by_id.output_tokens == first_at
    assert by_id_chunks[-1].finish_reason == "end_id" and by_id_chunks[-1].text == ""

    word = VOCAB[third.token_id]
    by_word = engine.submit(GenerationRequest("stop test", max_tokens=30, stop_words=(word,)))
    text = await by_word.collect()
    assert text.endswith(word) and text == "".join(c.text for c in chunks[: by_word.output_tokens])
    assert by_word.output_tokens <= 3


# --- KV blocks and cancellation ------------------------------------------------------------
async def test_kv_capacity_limits_admission_and_rejects_oversized_requests(make_engine):
    # Each request reserves ceil((1 + 31) / 16) = 2 blocks; the pool holds 3.
    engine = make_engine(kv_capacity_blocks=3)
    a = engine.submit(GenerationRequest("a", max_tokens=31))
    b = engine.submit(GenerationRequest("b", max_tokens=31))
    assert (engine.running, engine.waiting, engine.kv_blocks_used) == (1, 1, 2)
    with pytest.raises(InvalidRequestError, match="KV cache blocks"):
        engine.submit(GenerationRequest("word " * 100, max_tokens=10))
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        engine.submit(GenerationRequest("a", max_tokens=0))
    await a.collect()
    await b.collect()
    assert engine.kv_blocks_used == 0 and engine.kv_cache.free == 3


async def test_cancellation_removes_the_sequence_and_frees_its_slot(make_engine):
    engine = make_engine(max_running_sequences=1)
    long = engine.submit(GenerationRequest("long", max_tokens=15_000))
    waiting = engine.submit(GenerationRequest("next", max_tokens=3))
    stream = long.stream()
    await anext(stream)
    await anext(stream)
    assert engine.kv_blocks_used > 0 and engine.waiting == 1
    long.cancel()
    with pytest.raises(RequestCancelledError):  # after any chunks already delivered
        async for _ in stream:
            pass
    assert await waiting.collect()  # admitted once the cancelled one left
    assert engine.stats.failures["CANCELED"] == 1 and engine.stats.success == 1
    assert long.output_tokens < 1000 and engine.running == 0 and engine.kv_blocks_used == 0

    queued_then_cancelled = [engine.submit(GenerationRequest("q", max_tokens=50)) for _ in range(2)]
    queued_then_cancelled[1].cancel()  # still waiting: leaves the queue
    assert engine.waiting == 0
    await queued_then_cancelled[0].collect()


async def test_stop_fails_unfinished_requests(make_engine):
    engine = make_engine()
    seq = engine.submit(GenerationRequest("x", max_tokens=15_000))
    await engine.stop()
    with pytest.raises(Exception, match="unloaded"):
        await seq.collect()


# --- one GPU, several models -------------------------------------------------------------
async def test_models_on_one_gpu_share_its_compute():
    """Two busy models on one simulated GPU take about twice as long as on two GPUs, and their
    busy times add up to the wall time (not to twice it)."""
    from services.enginesim.engine import GpuClock

    scale = 100.0  # a 5 ms step takes 50 us of wall time

    async def run(shared: bool) -> tuple[float, float]:
        gpu = GpuClock()
        engines = [ModelEngine(make_spec(), time_scale=scale, gpu=gpu if shared else None) for _ in range(2)]
        for e in engines:
            e.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await asyncio.gather(
                *(e.submit(GenerationRequest("x", max_tokens=200)).collect() for e in engines)
            )
            wall = loop.time() - started
            return wall, sum(e.stats.busy_real_s for e in engines)
        finally:
            for e in engines:
                await e.stop()

    apart, busy_apart = await run(shared=False)
    together, busy_together = await run(shared=True)
    # Each model: 200 steps of (5 + 1) ms = 1.2 s simulated = 12 ms wall.
    assert busy_apart == pytest.approx(2 * 0.012, rel=0.01) and busy_together == pytest.approx(busy_apart)
    # One-sided wall-clock bounds only (a busy machine can only make runs slower): sharing one
    # GPU serialises the two models' steps, so together takes at least about twice one model.
    assert apart >= 0.012 * 0.9 and together >= 1.8 * 0.012


def test_gpu_utilization_is_measured_over_a_window_whoever_scrapes(monkeypatch):
    """Prometheus scrapes just before the pool does: the pool still reads the GPU's busy share
    over the trailing window (about 50% here), not over the 10 ms since Prometheus's scrape."""
    from services.enginesim import metrics

    clock = {"t": 100.0}
    monkeypatch.setattr(metrics.time, "monotonic", lambda: clock["t"])
    collector = metrics.SimulatorCollector(sim=None)  # type: ignore[arg-type]

    def busy_at(t: float) -> float:  # a 0.2 s step ends every 0.4 s: 50% busy
        return 0.2 * int((t - 100.0) / 0.4)

    pool_view = []
    for k in range(1, 12):
        for offset, keep in ((0.0, False), (0.01, True)):  # Prometheus, then the pool
            clock["t"] = 100.0 + 0.41 + 0.8 * k + offset
            u = collector._utilization(busy_at(clock["t"]))
            if keep:
                pool_view.append(u)
    assert all(0.35 <= u <= 0.65 for u in pool_view), pool_view
    clock["t"] += 0.1
    assert collector._utilization(0.0) == 0.0  # a model unloaded: the window restarts


async def test_busy_time_counts_the_part_of_a_long_step_already_run():
    """A scrape in the middle of a long step (a 70B's prefill) counts the part already run: the
    utilisation window then follows the GPU instead of getting the whole step when it ends."""
    from services.enginesim.metrics import busy_seconds

    scale = 10.0  # one step: 5 ms + 1 ms + 3,000 prompt tokens x 0.5 ms = 1.506 s simulated, 0.15 s wall
    engine = ModelEngine(make_spec(max_running_sequences=1), time_scale=scale)
    engine.start()
    loop = asyncio.get_running_loop()
    try:
        seq = engine.submit(GenerationRequest(" ".join(VOCAB[i % 50] for i in range(3000)), max_tokens=1))
        await asyncio.sleep(0.075)
        mid = busy_seconds(engine.stats, loop.time())
        assert engine.stats.busy_real_s == 0.0 and 0.02 <= mid <= 0.151
        await seq.collect()
        assert busy_seconds(engine.stats, loop.time() + 10) == pytest.approx(engine.stats.busy_real_s)
    finally:
        await engine.stop()
