"""A bare Python relay of the OpenAI chat API: one raw ASGI app, no logic, served as the router
serves its OpenAI front door, behind the floor Envoy of bench/vs_litellm.py's path (p).

The server is the router's own (services/common/http_server.py: uvicorn with httptools on the
process's asyncio loop, access log off, Nagle off, keep-alive 75 s, writes of one loop turn
coalesced, mTLS with the certificate, key and CA given, client certificates required), so Envoy
reaches it exactly as it reaches a router. The client is the router's too: one session from
services/router/engine_http.py's `open_session` (the router's OpenAI engine's pool limit,
keep-alive, headers, no cookies, `Accept-Encoding: identity`, no decompression) with the call
limits of `call_timeout`. The app reads the request body, POSTs it to the engine's
/v1/chat/completions and relays the response's bytes as they arrive (`iter_any`).
`/healthz` answers 200 for Envoy's health check, as the router's does.

This is the floor of "Envoy mTLS + any Python ASGI front door + the router's engine client".

Usage: python bench/_http_relay.py ENGINE_BASE_URL --tls-cert C --tls-key K --tls-ca CA
       (ENGINE_BASE_URL ends in /v1; prints the port it listens on)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: this checkout's services

from yarl import URL

from services.common.config import TlsFiles
from services.common.http_env import base_url
from services.common.http_server import start_http_server
from services.router.engine_access import NO_ACCESS
from services.router.engine_http import EngineSession, call_timeout, open_session

HEALTH_PATH = "/healthz"  # what Envoy's router_http cluster checks
MAX_CONNECTIONS = 256  # the router's OpenAI engine's pool limit per endpoint (OpenAIEngine's default)
JSON = {"content-type": "application/json"}


async def read_body(receive) -> bytes:
    parts, more = [], True
    while more:
        message = await receive()
        parts.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(parts)


def chat_url(engine_url: str) -> URL:
    """The engine's chat completions, from its base URL (with or without /v1)."""
    return URL(f"{base_url(engine_url)}/v1/chat/completions")


def relay_app(engine: EngineSession, target: URL):
    """The raw ASGI app: every POST goes to `target`; the answer's bytes go back as they arrive."""

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == HEALTH_PATH:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        body = await read_body(receive)
        response = await engine.session.post(
            target, data=body, headers=JSON, allow_redirects=False, timeout=call_timeout(None)
        )
        whole = False
        try:
            kind = response.headers.get("content-type", "application/json").encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [(b"content-type", kind)],
                }
            )
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            whole = True
        finally:
            if whole:  # the body was read to its end: the connection goes back to the pool
                response.release()
            else:  # the caller went away mid-answer: drop the connection, so the engine stops
                response.close()

    return app


async def main(args: argparse.Namespace) -> None:
    engine = open_session(args.engine_url, NO_ACCESS, MAX_CONNECTIONS)
    app = relay_app(engine, chat_url(args.engine_url))
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)
    server = await start_http_server(app, "127.0.0.1", 0, tls, coalesce_writes=True)  # as the router's
    print(server.port, flush=True)
    try:
        await server.task
    finally:
        await engine.session.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("engine_url")
    p.add_argument("--tls-cert", required=True)
    p.add_argument("--tls-key", required=True)
    p.add_argument("--tls-ca", required=True)
    asyncio.run(main(p.parse_args()))
