"""The embedded HTTP server: mTLS with the peer certificate's identities in every request's
scope, client certificates required, and Nagle off on accepted connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl

import httpx2
import pytest

from services.common import http_server
from services.common.config import TlsFiles
from services.common.http_server import MAX_HEAD_BYTES, PEER_IDS_KEY, TLS_KEY, start_http_server
from services.devtools.certs import make_certs


async def peer_app(scope, receive, send) -> None:
    body = json.dumps({"peer_ids": list(scope[PEER_IDS_KEY]), "tls": scope[TLS_KEY]}).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def certs(tmp_path):
    return make_certs(tmp_path / "certs", agents=["a1"], services=["router"])


def _client_tls(certs, leaf=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    if leaf is not None:
        ctx.load_cert_chain(str(leaf.cert), str(leaf.key))
    return ctx


@pytest.mark.parametrize("coalesce_writes", [False, True])
async def test_scope_carries_the_peer_certificate_and_connections_skip_nagle(certs, coalesce_writes):
    leaf = certs.service("router")
    server = await start_http_server(
        peer_app, "127.0.0.1", 0, TlsFiles(str(leaf.cert), str(leaf.key), str(certs.ca_cert)),
        coalesce_writes=coalesce_writes,
    )  # fmt: skip
    try:
        async with httpx2.AsyncClient(verify=_client_tls(certs, certs.agent("a1"))) as client:
            resp = await client.get(f"https://localhost:{server.port}/")
            assert resp.json() == {"peer_ids": ["spiffe://harness.local/agent/a1"], "tls": True}
            # The keep-alive connection is still open: Nagle must be off on the server's side,
            # or a response written in pieces waits for the client's delayed ACK (40 ms).
            (conn,) = server.server.server_state.connections
            sock = conn.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        async with httpx2.AsyncClient(verify=_client_tls(certs)) as anonymous:
            with pytest.raises(httpx2.TransportError):  # no client certificate: no handshake
                await anonymous.get(f"https://localhost:{server.port}/")
    finally:
        await server.stop(1)


async def test_plaintext_scope_has_no_peer(certs):
    server = await start_http_server(peer_app, "127.0.0.1", 0, TlsFiles())
    try:
        async with httpx2.AsyncClient() as client:
            resp = await client.get(f"http://127.0.0.1:{server.port}/")
        assert resp.json() == {"peer_ids": [], "tls": False}
    finally:
        await server.stop(1)


async def test_a_busy_port_is_named(certs):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            await start_http_server(peer_app, "127.0.0.1", port, TlsFiles())


async def stream_app(scope, receive, send) -> None:
    """A chunked answer written in several body messages, some in the same loop turn."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for i in range(3):
        await send({"type": "http.response.body", "body": f"event {i}\n".encode(), "more_body": True})
    await asyncio.sleep(0.01)  # a later turn: its own write
    await send({"type": "http.response.body", "body": b"end\n", "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def test_coalesced_writes_keep_the_bytes_and_the_connection(certs):
    leaf = certs.service("router")
    tls = TlsFiles(str(leaf.cert), str(leaf.key), str(certs.ca_cert))
    server = await start_http_server(stream_app, "127.0.0.1", 0, tls, coalesce_writes=True)
    try:
        async with httpx2.AsyncClient(verify=_client_tls(certs, certs.agent("a1"))) as client:
            for _ in range(2):  # the second request reuses the kept-alive connection
                resp = await client.get(f"https://localhost:{server.port}/")
                assert resp.status_code == 200
                assert resp.text == "event 0\nevent 1\nevent 2\nend\n"
            assert len(server.server.server_state.connections) == 1
    finally:
        await server.stop(1)


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    answer = await asyncio.wait_for(reader.read(), 10)  # the server closes after answering
    writer.close()
    return answer


@pytest.mark.parametrize("coalesce_writes", [False, True])
async def test_headers_past_the_limit_are_431_not_kept_in_memory(coalesce_writes):
    """httptools keeps a request's headers until the blank line: a client sending megabytes of
    them (one huge value, or thousands of small ones) is refused once past MAX_HEAD_BYTES, and
    reads the 431 (the rest it sends is read and dropped before the close, not reset)."""
    server = await start_http_server(peer_app, "127.0.0.1", 0, TlsFiles(), coalesce_writes=coalesce_writes)
    head = b"GET / HTTP/1.1\r\nhost: x\r\n"
    try:
        one_huge = await _exchange(server.port, head + b"x-pad: " + b"a" * (4 * MAX_HEAD_BYTES))
        many = await _exchange(server.port, head + b"".join(b"x-h%d: v\r\n" % i for i in range(30_000)))
        async with httpx2.AsyncClient() as client:  # below the limit: still served
            pad = {"x-pad": "a" * (MAX_HEAD_BYTES - 1024)}
            near = await client.get(f"http://127.0.0.1:{server.port}/", headers=pad)
    finally:
        await server.stop(1)
    for answer in (one_huge, many):
        status, _, body = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 431 "), answer[:200]
        message = json.loads(body)["error"]["message"]
        assert message == f"the request line and headers are over {MAX_HEAD_BYTES} bytes"
    assert near.status_code == 200


@pytest.mark.parametrize(
    ("request_head", "found"),
    [
        (b"x-request-id: a\x01b\r\n\r\n", "Invalid header value char"),
        (b"content-length: abc\r\n\r\n{}", "Invalid character in Content-Length"),
        (b"content-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", "Content-Length"),
    ],
)
async def test_a_request_httptools_cannot_parse_is_400_saying_what_it_found(request_head, found):
    server = await start_http_server(peer_app, "127.0.0.1", 0, TlsFiles())
    try:
        # After a first request answered on the connection: the refusal is this request's own.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (await reader.readuntil(b"0\r\n\r\n")).startswith(b"HTTP/1.1 200 ")  # its last chunk
        writer.write(b"POST / HTTP/1.1\r\nhost: x\r\n" + request_head)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    finally:
        await server.stop(1)
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in status
    error = json.loads(body)["error"]
    assert error["message"].startswith("the request is not valid HTTP/1.1: ") and found in error["message"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_http")


async def test_a_head_that_does_not_arrive_in_time_is_408_and_the_connection_closes(monkeypatch):
    """A connection that sends nothing, or half a request line, is not held open for ever."""
    monkeypatch.setattr(http_server, "HEAD_TIMEOUT_S", 0.2)
    server = await start_http_server(peer_app, "127.0.0.1", 0, TlsFiles())
    try:
        silent = await _exchange(server.port, b"")
        half = await _exchange(server.port, b"GET / HTTP/1.1\r\nhost: ")
        async with httpx2.AsyncClient() as client:  # a whole request, then idle: served as before
            served = await client.get(f"http://127.0.0.1:{server.port}/")
            await asyncio.sleep(0.4)
            again = await client.get(f"http://127.0.0.1:{server.port}/")
    finally:
        await server.stop(1)
    for answer in (silent, half):
        status, _, body = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert (
            json.loads(body)["error"]["message"] == "the request line and headers did not arrive within 0.2 s"
        )
    assert served.status_code == again.status_code == 200


async def body_app(scope, receive, send) -> None:
    size, more = 0, True
    while more:
        message = await receive()
        size, more = size + len(message.get("body", b"")), message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"%d" % size})


async def _post_slowly(port: int, declared: int, parts: list[bytes], gap_s: float) -> tuple[bytes, bytes]:
    """What the server answers to a POST whose body comes in `parts`, `gap_s` apart (the last
    part sent, the client keeps the connection open and says nothing); and what follows."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % declared)
    for part in parts:
        writer.write(part)
        await asyncio.sleep(gap_s)
    answer = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10)
    rest = await asyncio.wait_for(reader.read(), 10)  # b"" once the server closes
    writer.close()
    return answer, rest


async def _trickle(port: int) -> bytes:
    """A body of a million bytes sent a byte every 20 ms, for as long as the server listens."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n")

    async def send_forever() -> None:
        with contextlib.suppress(ConnectionError):
            while not writer.is_closing():
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.02)

    sending = asyncio.create_task(send_forever())
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        sending.cancel()
        writer.close()


async def test_a_body_that_does_not_arrive_in_time_is_408_and_the_connection_closes(monkeypatch):
    """A body stalled after its headers, or trickled a byte at a time, is answered 408 once
    BODY_TIMEOUT_S has passed since its headers, and the connection closes; one slower than a
    burst but whole in time is served; one the app answered without reading is not waited for."""
    monkeypatch.setattr(http_server, "BODY_TIMEOUT_S", 0.3)
    server = await start_http_server(body_app, "127.0.0.1", 0, TlsFiles())
    unread = await start_http_server(peer_app, "127.0.0.1", 0, TlsFiles())
    try:
        stalled = await _exchange(server.port, b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
        trickled = await _trickle(server.port)
        slow, kept = await asyncio.wait_for(_served_slowly(server.port), 10)
        answered, after = await _post_slowly(unread.port, 10, [b"abc"], 0)
    finally:
        await server.stop(1)
        await unread.stop(1)
    for answer in (stalled, trickled):
        status, _, body = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 408 ") and b"connection: close" in status, answer[:200]
        error = json.loads(body)["error"]
        assert error["message"] == "the request body did not arrive within 0.3 s"
        assert error["code"] == "request_timeout"
    assert slow.startswith(b"HTTP/1.1 200 ") and slow.endswith(b"\r\n6\r\n0\r\n\r\n") and kept
    assert answered.startswith(b"HTTP/1.1 200 ") and after == b""


async def _served_slowly(port: int) -> tuple[bytes, bool]:
    """A 6-byte body in two halves 0.15 s apart (inside the bound): the answer, and whether the
    connection still serves a next request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 6\r\n\r\nabc")
    await asyncio.sleep(0.15)
    writer.write(b"def")
    answer = await reader.readuntil(b"0\r\n\r\n")
    await asyncio.sleep(0.3)  # past the bound: the finished body's timer is not left running
    writer.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\nx")
    kept = (await reader.readuntil(b"0\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    writer.close()
    return answer, kept
