"""Large inputs are redacted in worker processes: the event loop keeps serving others, work is
bounded, and redaction stays linear in its input."""

from __future__ import annotations

import asyncio
import pickle
import time

import pytest
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2

from services.common.errors import ResourceExhausted
from services.router.privacy import OUTPUT_PIECE_CHARS, AgentRedactors, OutputRedaction
from services.router.redaction import Redactor, policy_from_dict
from services.router.redaction import contact as contact_recognizers
from services.router.redaction_workers import RedactionWorkers, is_small, json_is_small

PHONES = "13812345678 "


def agent() -> registry_pb2.Agent:
    a = registry_pb2.Agent(name="a1", project="p", state=common_pb2.AGENT_STATE_ONLINE, revision=1)
    a.data_policy.pii.add(kind="phone", mode=registry_pb2.MASK_MODE_MASK)
    a.data_policy.pii.add(kind="cn_resident_id", mode=registry_pb2.MASK_MODE_HASH)
    return a


@pytest.fixture
def redactors():
    r = AgentRedactors("k", RedactionWorkers(workers=1))
    yield r
    r.close()


async def lag_probe(stop: asyncio.Event, gaps: list[float]) -> None:
    """Records how late each 5 ms sleep wakes up: the time the loop was not serving others."""
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.005)
        gaps.append(time.perf_counter() - t - 0.005)


async def test_a_large_prompt_is_redacted_while_the_loop_keeps_serving_others(redactors):
    big = PHONES * 10_000  # 120 KB, 10k numbers: about a second of CPU
    gaps: list[float] = []
    stop = asyncio.Event()
    probe = asyncio.create_task(lag_probe(stop, gaps))
    counts: dict[str, int] = {}
    started = time.perf_counter()
    large = asyncio.create_task(redactors.prompt(agent(), big, counts))
    await asyncio.sleep(0.05)
    small_counts: dict[str, int] = {}
    small, _ = await redactors.prompt(agent(), "call 13912345678 today", small_counts)
    assert small == "call [PHONE] today" and small_counts == {"phone": 1}
    assert not large.done()  # an ordinary request was served while the large one was redacted
    text, _ = await large
    took = time.perf_counter() - started
    stop.set()
    await probe
    assert counts == {"phone": 10_000} and "13812345678" not in text and text.count("[PHONE]") == 10_000
    # Generous: inline, the loop would have stalled for the whole redaction (`took`).
    print(f"redaction {took:.2f} s, worst loop lag {max(gaps) * 1000:.1f} ms over {len(gaps)} ticks")
    assert max(gaps) < min(1.0, took / 4), (max(gaps), took)
    assert redactors.workers.offloaded_total == 1


async def test_large_tool_data_is_redacted_off_the_loop_the_same_way(redactors):
    redactor, _ = redactors.for_agent(agent())
    value = {"rows": [{"phone": "13812345678", "n": i} for i in range(2000)]}
    counts: dict[str, int] = {}
    out = await redactors.redact_json(redactor, value, counts)
    assert counts == {"phone": 2000} and out["rows"][7] == {"phone": "[PHONE]", "n": 7}
    assert redactors.workers.offloaded_total == 1
    assert await redactors.redact_json(None, value, {}) is value  # no policy: untouched


async def test_the_queue_of_large_inputs_is_bounded():
    workers = RedactionWorkers(workers=1, max_queued=1)
    redactor = Redactor(policy_from_dict({"phone": "mask"}))
    try:
        first = asyncio.create_task(workers.redact(redactor, PHONES * 5000))
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted, match="the limit is 1"):
            await workers.redact(redactor, PHONES * 5000)
        assert (await first).counts == {"phone": 5000}
    finally:
        workers.close()


def test_small_inputs_stay_inline_and_the_size_walk_is_bounded():
    assert is_small("an ordinary prompt " * 100) and is_small("13812345678 " * 20)
    assert not is_small("x" * 10_000) and not is_small("13812345678 " * 30)
    assert not is_small("１３８１２３４５６７８ " * 30)  # full-width digits are folded first: work too
    assert json_is_small({"a": ["13812345678"] * 10, "b": 1})
    assert not json_is_small({"a": ["13812345678"] * 40})
    assert not json_is_small({"k" * 9000: 1})  # keys count too
    assert not json_is_small([[1] * 10] * 100_000)  # stops early, without walking it all


def test_a_redactor_pickles_as_its_inputs_and_hashes_alike():
    redactor = Redactor(policy_from_dict({"cn_resident_id": "hash", "phone": "mask"}), key="secret")
    copy = pickle.loads(pickle.dumps(redactor))
    text = "ID 11010519491231002X tel 13812345678"
    assert copy.redact(text) == redactor.redact(text) and "[PHONE]" in copy.redact(text).text


def test_redaction_work_is_linear_in_the_input(monkeypatch):
    """Candidate validations grow with the input, not faster (op counts, not wall-clock)."""
    redactor = Redactor(policy_from_dict({"phone": "mask", "bank_card": "mask", "cn_resident_id": "mask"}))
    calls = 0
    accept = contact_recognizers.Phone._accept

    def counted(self, raw):
        nonlocal calls
        calls += 1
        return accept(self, raw)

    monkeypatch.setattr(contact_recognizers.Phone, "_accept", counted)
    work = []
    for n in (2_000, 20_000):
        calls = 0
        unit = "13812345678 6222021234567890123 电话 "
        redactor.redact((unit * (n // len(unit) + 1))[:n])
        work.append(calls)
    assert work[0] > 0 and work[1] <= 11 * work[0], work


async def test_a_large_output_chunk_is_redacted_in_pieces_that_yield_the_loop(redactors):
    redactor, _ = redactors.for_agent(agent())
    text = "".join(f"第{i}位客户13812{i:06d}，身份证11010519491231002X。" for i in range(300))
    counts: dict[str, int] = {}
    output = OutputRedaction(redactor, "fp", counts)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    running = asyncio.create_task(ticker())
    released = await output.feed(text) + output.flush()
    running.cancel()
    assert released == redactor.redact(text).text and counts == {"phone": 300, "cn_resident_id": 300}
    assert ticks >= len(text) // OUTPUT_PIECE_CHARS  # the loop ran between the pieces
