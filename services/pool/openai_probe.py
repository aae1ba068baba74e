"""Probes of OpenAI-protocol engines (vLLM, SGLang, TGI, Ollama, Triton's OpenAI frontend):
readiness from the flavour's health route, the served models from ``GET /v1/models``. Calls
carry the endpoint's headers (an API key) and verify TLS with its CA; answers are bounded."""

from __future__ import annotations

import json
import logging
import ssl

import httpx

from services.pool.access import EngineAccess
from services.pool.flavours import Flavour
from services.pool.state import IndexEntry

MAX_MODELS_BYTES = 1 << 20
MAX_MODELS = 1024
# httpx logs every request at INFO: per engine call and per probe, that is noise, not news.
logging.getLogger("httpx").setLevel(logging.WARNING)


def http_client(base_url: str, access: EngineAccess, timeout_s: float) -> httpx.AsyncClient:
    verify: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=access.ca_file) if access.ca_file else True
    )
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/").removesuffix("/v1"),
        headers=dict(access.headers),
        verify=verify,
        timeout=timeout_s,
        limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
    )


async def probe_openai(
    client: httpx.AsyncClient, flavour: Flavour
) -> tuple[bool, tuple[IndexEntry, ...], str]:
    """(ready, models, error). Any failure is "not ready" with what went wrong."""
    try:
        if flavour.health_path:
            health = await client.get(flavour.health_path)
            if health.status_code != 200:
                return False, (), f"GET {flavour.health_path}: HTTP {health.status_code}"
        async with client.stream("GET", "/v1/models") as resp:
            if resp.status_code != 200:
                return False, (), f"GET /v1/models: HTTP {resp.status_code}"
            body = b""
            async for part in resp.aiter_bytes():
                body += part
                if len(body) > MAX_MODELS_BYTES:
                    return False, (), f"GET /v1/models: answer over {MAX_MODELS_BYTES} bytes"
    except httpx.HTTPError as exc:
        return False, (), f"{type(exc).__name__}: {exc}"
    try:
        data = json.loads(body)["data"]
        names = [str(m["id"]) for m in data[:MAX_MODELS] if isinstance(m, dict) and m.get("id")]
    except (ValueError, KeyError, TypeError):
        return False, (), "GET /v1/models: not an OpenAI model list"
    return True, tuple(IndexEntry(n, "", "READY") for n in dict.fromkeys(names)), ""
