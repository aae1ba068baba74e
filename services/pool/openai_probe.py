"""Probes of OpenAI-protocol engines (vLLM, SGLang, TGI, Ollama, Triton's OpenAI frontend):
readiness from the flavour's health route, the served models from ``GET /v1/models``. Calls
carry the endpoint's headers (an API key) and verify TLS with its CA (http_probe.py); answers
are bounded."""

from __future__ import annotations

import json

from services.common.http_env import base_url
from services.pool.access import EngineAccess
from services.pool.flavours import Flavour
from services.pool.http_probe import HttpFailure, HttpSession, api_session
from services.pool.state import IndexEntry

MAX_MODELS_BYTES = 1 << 20
MAX_MODELS = 1024
MAX_HEALTH_BYTES = 64 * 1024  # read to keep the connection; the status decides


def http_client(address: str, access: EngineAccess, timeout_s: float) -> HttpSession:
    return api_session(base_url(address), access.headers, access.ca_file, timeout_s)


async def probe_openai(
    client: HttpSession, address: str, flavour: Flavour
) -> tuple[bool, tuple[IndexEntry, ...], str]:
    """(ready, models, error). Any failure is "not ready" with what went wrong."""
    base = base_url(address)
    try:
        if flavour.health_path:
            status, _ = await client.get(base + flavour.health_path, MAX_HEALTH_BYTES)
            if status != 200:
                return False, (), f"GET {flavour.health_path}: HTTP {status}"
        status, body = await client.get(base + "/v1/models", MAX_MODELS_BYTES)
    except HttpFailure as exc:
        return False, (), str(exc)
    if status != 200:
        return False, (), f"GET /v1/models: HTTP {status}"
    if body is None:
        return False, (), f"GET /v1/models: answer over {MAX_MODELS_BYTES} bytes"
    try:
        data = json.loads(body)["data"]
        names = [str(m["id"]) for m in data[:MAX_MODELS] if isinstance(m, dict) and m.get("id")]
    except (ValueError, KeyError, TypeError):
        return False, (), "GET /v1/models: not an OpenAI model list"
    return True, tuple(IndexEntry(n, "", "READY") for n in dict.fromkeys(names)), ""
