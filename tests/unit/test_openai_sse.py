"""The front door's event stream response, driven as uvicorn drives it: receive() blocks until
the client leaves or the response is complete, then answers `http.disconnect`."""

from __future__ import annotations

import asyncio

import pytest

from services.router.openai_http.sse import EventStream


class Connection:
    """uvicorn's side of one request: what was sent, and a client that can leave."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.over = asyncio.Event()  # the client left, or the response is complete

    async def receive(self) -> dict:
        await self.over.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self.over.set()


async def test_events_are_sent_one_body_message_each_then_an_empty_last_one():
    async def events():
        yield b"data: a\n\n"
        yield b"data: b\n\n"

    conn = Connection()
    response = EventStream(events(), media_type="text/event-stream", headers={"x-request-id": "r"})
    await response({"type": "http"}, conn.receive, conn.send)
    start, *bodies = conn.sent
    assert start["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    assert [(m["body"], m["more_body"]) for m in bodies] == [
        (b"data: a\n\n", True), (b"data: b\n\n", True), (b"", False)
    ]  # fmt: skip
    await asyncio.sleep(0.01)  # the disconnect after completion cancels nothing
    assert not asyncio.current_task().cancelling()


async def test_a_client_leaving_between_events_closes_the_generator_without_an_error():
    closed = asyncio.Event()

    async def events():
        try:
            yield b"data: first\n\n"
            await asyncio.sleep(60)  # a long silence: no event would notice the client left
            yield b"data: never\n\n"
        finally:
            closed.set()

    conn = Connection()
    response = EventStream(events(), media_type="text/event-stream")
    serving = asyncio.create_task(response({"type": "http"}, conn.receive, conn.send))
    await asyncio.sleep(0.01)
    conn.over.set()  # the client hangs up
    await asyncio.wait_for(serving, 10)  # returns normally: uvicorn logs no error
    assert closed.is_set()
    assert [m.get("body") for m in conn.sent[1:]] == [b"data: first\n\n"]


async def test_a_server_stop_still_cancels_the_request():
    async def events():
        yield b"data: first\n\n"
        await asyncio.sleep(60)
        yield b"data: never\n\n"

    conn = Connection()
    serving = asyncio.create_task(EventStream(events())({"type": "http"}, conn.receive, conn.send))
    await asyncio.sleep(0.01)
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving


async def test_a_failed_send_closes_the_generator_at_once():
    closed = asyncio.Event()

    async def events():
        try:
            yield b"data: first\n\n"
            yield b"data: second\n\n"
        finally:
            closed.set()

    conn = Connection()

    async def broken_send(message: dict) -> None:
        if message.get("body"):
            raise OSError("connection reset")
        await conn.send(message)

    with pytest.raises(OSError):
        await EventStream(events())({"type": "http"}, conn.receive, broken_send)
    assert closed.is_set()  # not left for the garbage collector: the generation stops now
