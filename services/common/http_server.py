"""An ASGI app served by uvicorn (httptools) inside a service's own event loop, beside its gRPC
server, with the same mTLS rules: client certificates from the Harness CA are required, and each
request's scope carries the peer certificate's URI SANs (`scope["harness.peer_ids"]`), so the
app can trust Envoy's XFCC header exactly as the gRPC interceptor does.

uvicorn's scope has no TLS details, so a small protocol subclass reads the peer certificate once
per connection. uvicorn's signal handling is left out: the service's own run_until_signal stops
this server with the gRPC one.

With `coalesce_writes`, what a connection writes in one turn of the event loop goes out as one
write at the end of that turn (CoalescedWrites): uvicorn writes the headers and every body
message on its own, and a streamed answer's events that arrive together would otherwise each
cost a TLS record, a send() and a read by the proxy on the other end. The bytes and their order
are the same; nothing waits past the current turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import socket
import ssl
from dataclasses import dataclass

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.common.config import TlsFiles
from services.common.identity import peer_spiffe_ids_der

log = logging.getLogger("harness.http")
PEER_IDS_KEY = "harness.peer_ids"
TLS_KEY = "harness.tls"


MAX_HEAD_BYTES = 64 * 1024  # a request line and headers past this are refused (Envoy's own limit is 60 KiB)
HEAD_DRAIN_BYTES, HEAD_DRAIN_S = 4 * 1024 * 1024, 1.0  # read and dropped after a refusal, at most
HEAD_TIMEOUT_S = 30.0  # from a connection's opening or a request's first byte to its headers' end
BODY_TIMEOUT_S = 30.0  # from a request's headers' end to its body's end
BODY_TIMED_OUT_KEY = "harness.body_timed_out"  # scope: set when the body missed BODY_TIMEOUT_S


class BodyTimedOut(Exception):
    """Raised by `receive` when a request's body did not all arrive within BODY_TIMEOUT_S. Each
    front door answers it in its own error shape (408); an app that does not gets the server's
    OpenAI-shaped 408. The connection closes after the answer either way."""

    def __init__(self) -> None:
        self.message = f"the request body did not arrive within {BODY_TIMEOUT_S:g} s"
        super().__init__(self.message)


class PeerAwareProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that puts the peer certificate's URI SANs into every request's scope,
    and refuses a request whose line and headers pass MAX_HEAD_BYTES with 431 (httptools keeps
    however many it is sent, in memory, until the blank line that ends them). Requests httptools
    cannot parse get a 400 naming what it found, and a head that does not arrive within
    HEAD_TIMEOUT_S a 408, each with an OpenAI-shaped JSON error body. A body that does not arrive
    within BODY_TIMEOUT_S of its headers is BodyTimedOut at the app's next `receive` (or, once
    the app has answered without reading it, the connection is closed)."""

    _head_bytes = 0
    _head_done = False  # the current request's headers are all in (or none has begun)
    _head_refused = False  # answered before any app: what still comes is dropped until the close

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        peer_ids, tls, app = peer_spiffe_ids_der(der), ssl_object is not None, self.app

        async def with_peer(scope, receive, send):
            scope[PEER_IDS_KEY], scope[TLS_KEY] = peer_ids, tls

            async def receive_in_time():
                message = await receive()
                if BODY_TIMED_OUT_KEY in scope and message["type"] == "http.request":
                    raise BodyTimedOut()
                return message

            try:
                await app(scope, receive_in_time, send)
            except BodyTimedOut as exc:  # an app with no answer of its own for it
                await send_json_error(send, 408, exc.message, "request_timeout")

        self.app = with_peer
        self._timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timed_out)

    def _head_timed_out(self) -> None:
        """A connection that opened, or began a request, and sent no whole head in time: 408
        (uvicorn times out only idle kept-alive connections, so one that never finishes a
        request line would stay open, as many as a client opens)."""
        if not self._head_done and not self._head_refused and not self.transport.is_closing():
            message = f"the request line and headers did not arrive within {HEAD_TIMEOUT_S:g} s"
            self._refuse(b"408 Request Timeout", message, "request_timeout")

    def _body_timed_out(self) -> None:
        """The body did not all arrive in time: the app reading it gets BodyTimedOut (its next
        `receive` is woken), and the connection closes after the answer; once answered, at once
        (a client trickling a body the app never read would hold it open for ever)."""
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or not cycle.more_body:
            return
        if cycle.response_complete:
            self.transport.close()
            return
        cycle.keep_alive = False
        cycle.scope[BODY_TIMED_OUT_KEY] = True
        cycle.message_event.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_refused:  # read and dropped, so the answer is read before the close, not a reset
            self._head_bytes += len(data)
            if self._head_bytes > HEAD_DRAIN_BYTES:
                self.transport.close()
            return
        self._unset_keepalive_if_required()
        try:  # uvicorn's own data_received, but the 400 says what httptools found
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._head_done and self.cycle.response_started:  # a body broken under this request's answer
                self.transport.close()
            else:
                self._refuse(b"400 Bad Request", f"the request is not valid HTTP/1.1: {exc}", "invalid_http")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        if self._head_done or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            message = f"the request line and headers are over {MAX_HEAD_BYTES} bytes"
            self._refuse(b"431 Request Header Fields Too Large", message, "request_header_fields_too_large")

    def _refuse(self, status: bytes, message: str, code: str) -> None:
        """An answer before any app saw the request, as a JSON error in the API's shape; what the
        client still sends is read and dropped (up to HEAD_DRAIN_BYTES or HEAD_DRAIN_S), then the
        connection closes."""
        self._head_refused = True
        body = _error_json(message, code)
        self.transport.write(
            b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, len(body), body)
        )
        self.loop.call_later(HEAD_DRAIN_S, self.transport.close)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes, self._head_done = 0, False
        self._timer.cancel()
        self._timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timed_out)

    def on_headers_complete(self) -> None:
        self._head_done = True
        self._timer.cancel()
        super().on_headers_complete()
        self._timer = self.loop.call_later(BODY_TIMEOUT_S, self._body_timed_out)

    def on_message_complete(self) -> None:
        self._timer.cancel()
        super().on_message_complete()


def _error_json(message: str, code: str) -> bytes:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return json.dumps({"error": error}).encode()


async def send_json_error(send, status: int, message: str, code: str) -> None:
    """An OpenAI-shaped JSON error as an ASGI response."""
    body = _error_json(message, code)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class CoalescedWrites:
    """A connection's transport whose writes within one event-loop turn are sent as one, at the
    end of that turn (or at once when the connection is closed first). The rest is the
    transport's own (flow control stays with it and the protocol)."""

    __slots__ = ("_context", "_loop", "_parts", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._parts: list[bytes] = []
        self._context = contextvars.Context()  # the flush reads no context: none copied per turn

    def write(self, data: bytes) -> None:
        if not self._parts:
            self._loop.call_soon(self.flush, context=self._context)
        self._parts.append(data)

    def flush(self) -> None:
        parts, self._parts = self._parts, []
        if parts and not self._transport.is_closing():
            self._transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class CoalescingProtocol(PeerAwareProtocol):
    """PeerAwareProtocol whose responses go out through CoalescedWrites."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = CoalescedWrites(transport, self.loop)  # type: ignore[assignment]


class _EmbeddedServer(uvicorn.Server):
    def capture_signals(self):  # the service's own handlers stop it
        return contextlib.nullcontext()


@dataclass
class HttpServer:
    server: uvicorn.Server
    sock: socket.socket
    task: asyncio.Task
    port: int

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stops taking connections, lets requests in flight finish for up to `grace_s`."""
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), grace_s)
        except TimeoutError:
            self.server.force_exit = True
            await self.task
        finally:
            self.sock.close()


async def start_http_server(
    app, host: str, port: int, tls: TlsFiles, *, reuse_port: bool = False, coalesce_writes: bool = False
) -> HttpServer:
    """Serves `app` on host:port (0 = a free port) with mTLS when `tls` is set; returns once it
    accepts connections. `coalesce_writes`: a connection's writes within one loop turn go out
    as one (CoalescedWrites)."""
    # IPPROTO_TCP named explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose
    # proto says TCP, and with proto 0 every response paid a 40 ms delayed-ACK stall.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # router workers share the port; the kernel spreads connections over them
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"HTTP front door: cannot listen on {host}:{port} ({exc.strerror})") from exc
    tls_args = {}
    if tls.enabled:
        tls_args = {
            "ssl_certfile": tls.cert,
            "ssl_keyfile": tls.key,
            "ssl_ca_certs": tls.ca,
            "ssl_cert_reqs": ssl.CERT_REQUIRED,  # only peers with a Harness certificate get in
        }
    config = uvicorn.Config(
        app,
        http=CoalescingProtocol if coalesce_writes else PeerAwareProtocol,
        loop="none",  # the service's running loop
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_keep_alive=75,  # longer than Envoy's idle upstream connections are kept
        **tls_args,
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="http-server")
    while not server.started:
        if task.done():
            sock.close()
            task.result()  # raises what stopped it
            raise OSError("HTTP front door stopped while starting")
        await asyncio.sleep(0.005)
    bound = sock.getsockname()[1]
    log.info("HTTP front door serving on %s:%d (%s)", host, bound, "mTLS" if tls.enabled else "plaintext")
    return HttpServer(server, sock, task, bound)
