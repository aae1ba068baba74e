"""One stream of concurrent requests (Triton's ModelStreamInfer) stays bounded: a client cannot
make it run more than max_in_flight requests at once, nor queue responses without end by not
reading them; everything it sent is still answered."""

from __future__ import annotations

import asyncio

from services.common.streams import serve_concurrently


async def _requests(n: int, read: list[int]):
    for i in range(n):
        read.append(i)
        yield i


async def test_no_more_than_max_in_flight_run_and_the_rest_wait_unread():
    running, peak, gate, read = set(), [0], asyncio.Event(), []

    async def handle(i: int, emit) -> None:
        running.add(i)
        peak[0] = max(peak[0], len(running))
        await gate.wait()
        running.discard(i)
        emit(i)

    stream = serve_concurrently(_requests(100, read), handle, max_in_flight=8)
    first = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)
    assert len(running) == 8 and len(read) <= 9  # the rest of the requests is not even read
    gate.set()
    answers = [await first] + [i async for i in stream]
    assert sorted(answers) == list(range(100)) and peak[0] == 8


async def test_a_client_that_reads_no_responses_stops_new_requests_from_starting():
    read, started = [], []

    async def handle(i: int, emit) -> None:
        started.append(i)
        for _ in range(10):
            emit(i)

    stream = serve_concurrently(_requests(1000, read), handle, max_in_flight=4, max_queued=50)
    first = await anext(stream)  # then the client stops reading
    await asyncio.sleep(0.05)
    assert len(started) <= 10 and len(read) <= 11  # about max_queued / 10 requests, not 1000
    rest = [i async for i in stream]
    assert len(rest) + 1 == 10_000 and first == 0 and len(started) == 1000
