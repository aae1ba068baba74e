"""A real HTTP server on 127.0.0.1, port 0, that answers each request with a scripted reply:
recorded response bytes, sent in the pieces given (each flushed on its own), and what the
client did: the requests it sent, on which connection, whether it dropped a response before
its end."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Reply:
    status: int = 200
    pieces: list[bytes] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "text/event-stream"})
    # After the pieces: None ends the body at once; an Event ends it once set (as servers send
    # the chunked encoding's end after a turn of their own); `hang` keeps it open until the
    # client goes away.
    end_after: asyncio.Event | None = None
    hang: bool = False


@dataclass(frozen=True)
class Seen:
    method: str
    url: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    peer_port: int  # the client's side of the connection: the same port is the same connection


class ReplayServer:
    def __init__(self, answer: Callable[[Seen], Reply], tls: ssl.SSLContext | None = None) -> None:
        self.answer, self.tls = answer, tls
        self.seen: list[Seen] = []
        self.dropped = asyncio.Event()  # a client went away before a response's end
        self.ended = asyncio.Event()  # a streamed response was sent to its end
        self._runner: web.ServerRunner | None = None
        self.url = ""

    async def __aenter__(self) -> ReplayServer:
        self._runner = web.ServerRunner(web.Server(self._handle, handler_cancellation=True))
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen = Seen(
            request.method,
            str(request.url),
            {k.lower(): v for k, v in request.headers.items()},
            await request.read(),
            peer[1],
        )
        self.seen.append(seen)
        reply = self.answer(seen)
        if reply.end_after is None and not reply.hang and len(reply.pieces) <= 1:
            return web.Response(status=reply.status, body=b"".join(reply.pieces), headers=reply.headers)
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        try:
            await response.prepare(request)
            for piece in reply.pieces:
                await response.write(piece)
                await asyncio.sleep(0)  # a turn of the loop: the client may read between pieces
            if reply.hang:
                await asyncio.Event().wait()
            if reply.end_after is not None:
                await reply.end_after.wait()
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            self.dropped.set()
            raise
        self.ended.set()
        return response
