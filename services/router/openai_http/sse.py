"""A server-sent event stream that stops (and so cancels the generation) when the client leaves.

Starlette's StreamingResponse does the same under ASGI spec 2.3 (uvicorn's) with an anyio task
group per response: a task for the stream, cancel scopes, and a repr of the coroutine to name
the task, which cost about as much as rendering the events. Here the stream runs in the request's
own task and one plain asyncio task waits for `http.disconnect` to cancel it. The bytes sent
are the same: StreamingResponse's headers, one body message per event, an empty last one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


class EventStream(StreamingResponse):
    body_iterator: AsyncIterator[bytes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        state = {"done": False, "left": False}

        async def cancel_when_client_leaves() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            # uvicorn answers receive() with a disconnect once the response is complete too.
            if not state["done"]:
                state["left"] = True
                task.cancel()

        watcher = asyncio.create_task(cancel_when_client_leaves())
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            async for event in self.body_iterator:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            state["done"] = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            # Ours only if the client left and nobody else (the server stopping) cancelled too.
            if not state["left"] or task.uncancel():
                raise
        finally:
            ended = state["done"]
            state["done"] = True
            watcher.cancel()
            if not ended:  # the client left, a send failed, or the server stops
                await _close(self.body_iterator)


async def _close(events: AsyncIterator[bytes]) -> None:
    """Closes the event generator now (its finally closes the generation), not when collected."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
