"""A bare Python relay of the OpenAI chat API: one raw ASGI app, no logic, served as the router
serves its OpenAI front door, behind the floor Envoy of bench/vs_litellm.py's path (p).

The server is the router's own (services/common/http_server.py: uvicorn with httptools on the
process's asyncio loop, access log off, Nagle off, keep-alive 75 s, writes of one loop turn
coalesced, mTLS with the certificate, key and CA given, client certificates required), so Envoy
reaches it exactly as it reaches a router. The app reads the request body, POSTs it with one
shared `httpx.AsyncClient` (the router's OpenAI engine's pool limits and timeouts) to the
engine's /chat/completions, streaming, and relays the response's bytes as they come.
`/healthz` answers 200 for Envoy's health check, as the router's does.

This is the floor of "Envoy mTLS + any Python ASGI front door + an httpx engine client".

Usage: python bench/_http_relay.py ENGINE_BASE_URL --tls-cert C --tls-key K --tls-ca CA
       (ENGINE_BASE_URL ends in /v1; prints the port it listens on)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: this checkout's services

import httpx

from services.common.config import TlsFiles
from services.common.http_server import start_http_server

HEALTH_PATH = "/healthz"  # what Envoy's router_http cluster checks


async def read_body(receive) -> bytes:
    parts, more = [], True
    while more:
        message = await receive()
        parts.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(parts)


def relay_app(client: httpx.AsyncClient, target: str):
    """The raw ASGI app: every POST goes to `target`; the answer's bytes go back as they come."""

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == HEALTH_PATH:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        body = await read_body(receive)
        request = client.build_request(
            "POST", target, content=body, headers={"content-type": "application/json"}
        )
        response = await client.send(request, stream=True)
        try:
            kind = response.headers.get("content-type", "application/json").encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [(b"content-type", kind)],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    return app


def engine_client() -> httpx.AsyncClient:
    """One pooled client, with the router's OpenAI engine's limits and timeouts (plaintext: the
    engine speaks plain HTTP/1.1 to the routers too)."""
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=30.0)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(None, connect=5.0))


async def main(args: argparse.Namespace) -> None:
    client = engine_client()
    app = relay_app(client, args.engine_url.rstrip("/") + "/chat/completions")
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)
    server = await start_http_server(app, "127.0.0.1", 0, tls, coalesce_writes=True)  # as the router's
    print(server.port, flush=True)
    await server.task


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("engine_url")
    p.add_argument("--tls-cert", required=True)
    p.add_argument("--tls-key", required=True)
    p.add_argument("--tls-ca", required=True)
    asyncio.run(main(p.parse_args()))
