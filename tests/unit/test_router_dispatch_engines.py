"""The dispatcher over the engines: it picks the engine by the endpoint's kind and fails over
across kinds, and it writes the call's journal entry once per try, when the engine says the
request went out or, for an engine that does not say, before the first chunk; an entry that
cannot be written ends the call without a retry."""

from __future__ import annotations

import pytest

from services.common.errors import Unavailable
from services.router.dispatch import Dispatcher
from services.router.engine import EngineChunk, EngineRequest
from services.router.flow import FlowController
from services.router.scheduling import Candidate, Scheduler

REQ = EngineRequest(model="m", prompt="Summarise the ledger policy", max_tokens=8, request_id="req-1")


class ScriptedEngine:
    def __init__(self, texts: list[str] | None = None, fail: Exception | None = None) -> None:
        self.texts, self.fail, self.calls = texts or [], fail, []

    async def stream(self, address: str, req: EngineRequest, timeout: float | None):
        self.calls.append(address)
        if self.fail is not None:
            raise self.fail
        for t in self.texts:
            yield EngineChunk(t, False)
        yield EngineChunk("", True, 1, len(self.texts))

    async def close(self) -> None:
        pass


class OneModelView:
    def __init__(self, candidates: list[Candidate]) -> None:
        self._candidates = candidates

    def candidates(self, model: str) -> list[Candidate]:
        return list(self._candidates)


class FakeCall:
    """The parts of a Call the dispatcher reads and fills in."""

    slo = None
    inp = type("Inp", (), {"timeout_s": 5.0})()
    endpoint = None
    journal = None
    failed_over_from = ""
    gpu_seconds = 0.0
    queue_s = 0.0

    def scheduling_request(self):
        from services.router.scheduling import SchedulingRequest

        return SchedulingRequest(model="m", prompt="p")

    def engine_request(self) -> EngineRequest:
        return REQ


async def test_dispatch_uses_the_kinds_engine_and_fails_over_across_kinds():
    triton = ScriptedEngine(fail=Unavailable("triton down"))
    openai = ScriptedEngine(texts=["from", " vllm"])
    view = OneModelView([
        Candidate("trt", "10.0.0.1:8001", "m", kind="triton"),
        Candidate("vllm", "http://10.0.0.2:8000", "m", kind="openai"),
    ])  # fmt: skip
    seen_first: set[str] = set()
    for seed in range(8):  # whichever the scheduler picks first, the answer comes from vLLM
        triton.calls.clear()
        call = FakeCall()
        d = Dispatcher(view, Scheduler(seed=seed), FlowController(), triton, openai=openai)
        chunks = [c async for c in d.stream(call)]
        assert "".join(c.text for c in chunks) == "from vllm" and call.endpoint.name == "vllm"
        seen_first.add("trt" if triton.calls else "vllm")
        assert call.failed_over_from == ("trt" if triton.calls else "")
    assert "trt" in seen_first  # some seed picked Triton first and failed over to the OpenAI endpoint


async def test_an_endpoint_of_a_kind_without_an_engine_is_unavailable():
    view = OneModelView([Candidate("vllm", "http://10.0.0.2:8000", "m", kind="openai")])
    d = Dispatcher(view, Scheduler(seed=1), FlowController(), ScriptedEngine(texts=["x"]))
    with pytest.raises(Unavailable, match=r"besides \['vllm'\]") as caught:
        async for _ in d.stream(FakeCall()):
            pass
    assert "first try failed: endpoint vllm speaks 'openai', which this router has no engine for" in str(
        caught.value
    )


class Journal:
    """A call's journal: notes each write and what the engine had been asked by then."""

    def __init__(self, seen: list | None = None, fail: Exception | None = None) -> None:
        self.writes: list[int] = []
        self.seen, self.fail = seen, fail

    def placed(self) -> None:
        self.writes.append(len(self.seen) if self.seen is not None else 0)
        if self.fail is not None:
            raise self.fail


class SilentEngine(ScriptedEngine):
    """Never calls on_sent, as a third-party or test engine may not."""


class SayingEngine(ScriptedEngine):
    async def stream(self, address: str, req: EngineRequest, timeout: float | None):
        self.calls.append(address)
        req.on_sent()
        for t in self.texts:
            yield EngineChunk(t, False)
        yield EngineChunk("", True, 1, len(self.texts))


@pytest.mark.parametrize("engine_type", [SilentEngine, SayingEngine])
async def test_the_journal_entry_is_written_once_per_try_before_the_first_chunk(engine_type):
    view = OneModelView([Candidate("trt", "10.0.0.1:8001", "m")])
    engine = engine_type(texts=["a", "b"])
    call = FakeCall()
    out: list[str] = []
    call.journal = Journal(seen=out)
    d = Dispatcher(view, Scheduler(seed=1), FlowController(), engine)
    async for chunk in d.stream(call):
        out.append(chunk.text)
    assert call.journal.writes == [0]  # once, before the caller had any chunk
    assert "".join(out) == "ab"


async def test_a_journal_that_cannot_be_written_ends_the_call_without_a_retry():
    view = OneModelView([Candidate("a", "10.0.0.1:8001", "m"), Candidate("b", "10.0.0.2:8001", "m")])
    engine = SayingEngine(texts=["x"])
    call = FakeCall()
    call.journal = Journal(fail=Unavailable("the call's start could not be recorded durably; refused"))
    d = Dispatcher(view, Scheduler(seed=1), FlowController(), engine)
    with pytest.raises(Unavailable, match="recorded durably"):
        async for _ in d.stream(call):
            pytest.fail("nothing may be served unrecorded")
    assert len(engine.calls) == 1  # no second endpoint tried: its entry could not be written either
