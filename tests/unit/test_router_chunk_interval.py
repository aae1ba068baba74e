"""Merging text deltas for clients that ask for a minimum interval between chunks, on a fake clock:
the first delta and the final chunk are never held, held text goes out when the interval ends
even if nothing else arrives, and the stream ends only once the pipeline's has."""

from __future__ import annotations

import asyncio

import pytest

from services.common.errors import InvalidArgument, Unavailable
from services.router.call import Chunk
from services.router.chunk_interval import HEADER, interval_ms, merge_deltas


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleepers: list[tuple[float, asyncio.Future]] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.sleepers.append((self.t + seconds, fut))
        return fut

    async def advance(self, seconds: float) -> None:
        self.t += seconds
        for due, fut in self.sleepers:
            if due <= self.t and not fut.done():
                fut.set_result(None)
        await settle()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


class Engine:
    """A pipeline stream the test feeds one chunk at a time (None ends it, an exception fails it)."""

    def __init__(self) -> None:
        self.feed: asyncio.Queue = asyncio.Queue()
        self.ended = False

    async def stream(self):
        try:
            while (item := await self.feed.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.ended = True

    async def send(self, item) -> None:
        self.feed.put_nowait(item)
        await settle()


async def collect(stream, out: list[Chunk]) -> None:
    async for chunk in stream:
        out.append(chunk)


async def test_held_deltas_merge_without_delaying_the_first_token_or_the_final_chunk():
    clock, engine, out = FakeClock(), Engine(), []
    reader = asyncio.create_task(collect(merge_deltas(engine.stream(), 0.1, clock), out))
    await engine.send(Chunk("a", output_tokens=1))
    assert [c.text for c in out] == ["a"]  # the first token went out with no time passing
    await clock.advance(0.01)
    await engine.send(Chunk("b", output_tokens=2))
    await clock.advance(0.01)
    await engine.send(Chunk("c", output_tokens=3))
    assert [c.text for c in out] == ["a"]  # within the interval: held
    await clock.advance(0.08)  # the interval since "a" ends, and nothing else arrived
    assert [(c.text, c.output_tokens) for c in out] == [("a", 1), ("bc", 3)]
    await clock.advance(0.2)
    await engine.send(Chunk("d", output_tokens=4))  # the interval passed: out at once
    await engine.send(Chunk("e", output_tokens=5))
    await engine.send(Chunk("f", final=True, output_tokens=6))  # final: out at once, with "e"
    assert [(c.text, c.final) for c in out] == [("a", False), ("bc", False), ("d", False), ("ef", True)]
    assert not reader.done()  # the call is not over until the pipeline's stream ends
    await engine.send(None)
    await reader
    assert engine.ended


async def test_an_empty_final_chunk_carries_the_held_text_and_an_error_reaches_the_caller():
    clock, engine, out = FakeClock(), Engine(), []
    reader = asyncio.create_task(collect(merge_deltas(engine.stream(), 0.5, clock), out))
    await engine.send(Chunk("a"))
    await engine.send(Chunk("b"))
    await engine.send(Chunk("", final=True))
    await engine.send(None)
    await reader
    assert [(c.text, c.final) for c in out] == [("a", False), ("b", True)]

    engine, out = Engine(), []
    reader = asyncio.create_task(collect(merge_deltas(engine.stream(), 0.5, clock), out))
    await engine.send(Chunk("a"))
    await engine.send(Unavailable("the engine went away"))
    with pytest.raises(Unavailable, match="the engine went away"):
        await reader


async def test_a_caller_that_leaves_closes_the_pipelines_stream():
    clock, engine = FakeClock(), Engine()
    merged = merge_deltas(engine.stream(), 0.5, clock)
    await engine.send(Chunk("a"))
    assert (await anext(merged)).text == "a"
    await engine.send(Chunk("b"))  # held
    await merged.aclose()
    assert engine.ended


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0), ("250", 250), (" 1000 ", 1000), (b"40", 40)],
)
def test_the_header_is_a_whole_number_of_milliseconds_up_to_a_second(value, expected):
    assert interval_ms([("x-other", "1"), (HEADER, value)]) == expected


@pytest.mark.parametrize("value", ["", "abc", "-1", "1001", "2.5", "1e3"])
def test_a_bad_header_is_refused_with_what_to_send(value):
    with pytest.raises(InvalidArgument, match="whole number of milliseconds from 0 to 1000"):
        interval_ms([(HEADER, value)])


def test_no_header_asks_for_nothing():
    assert interval_ms([("x-harness-session-id", "s")]) == 0 and interval_ms(None) == 0
