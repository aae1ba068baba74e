"""The embedded HTTP server: mTLS with the peer certificate's identities in every request's
scope, client certificates required, and Nagle off on accepted connections."""

from __future__ import annotations

import json
import socket
import ssl

import httpx2
import pytest

from services.common.config import TlsFiles
from services.common.http_server import PEER_IDS_KEY, TLS_KEY, start_http_server
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


async def test_scope_carries_the_peer_certificate_and_connections_skip_nagle(certs):
    leaf = certs.service("router")
    server = await start_http_server(
        peer_app, "127.0.0.1", 0, TlsFiles(str(leaf.cert), str(leaf.key), str(certs.ca_cert))
    )
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
