"""Embeddings from an OpenAI-compatible engine (vLLM, SGLang, TGI, Ollama): one
`POST {base}/v1/embeddings` with the batch, vectors as floats, usage from the engine (estimated
from the texts when it sends none). The answer is read up to a bound, checked (one vector per
text, all of one length, numbers only) and returned in the texts' order."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np

from services.common.errors import Unavailable
from services.router.engine import EmbeddingRequest, EmbeddingResult, estimate_tokens

MAX_EMBEDDINGS_BYTES = 64 << 20  # 2048 vectors of a few thousand floats, as JSON
CONNECT_TIMEOUT_S = 5.0


async def embed(
    client: httpx.AsyncClient, address: str, req: EmbeddingRequest, timeout: float | None, errors
) -> EmbeddingResult:
    """`errors(status, body)` turns an HTTP error into the engine seam's exception."""
    headers = {"x-request-id": req.request_id} if req.request_id else {}
    body = {"model": req.model, "input": list(req.texts), "encoding_format": "float"}
    request = client.build_request(
        "POST", "/v1/embeddings", json=body, headers=headers,
        timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT_S, timeout or CONNECT_TIMEOUT_S)),
    )  # fmt: skip
    try:
        response = await client.send(request, stream=True)
        try:
            raw = await _read(response, address)
        finally:
            await response.aclose()
    except httpx.HTTPError as exc:
        raise Unavailable(f"backend {address} failed: {type(exc).__name__}: {exc}") from exc
    if response.status_code != 200:
        raise errors(response.status_code, raw[: 64 << 10])
    return parse(address, req, raw)


async def _read(response: httpx.Response, address: str) -> bytes:
    parts, size = [], 0
    async for data in response.aiter_bytes():
        size += len(data)
        if size > MAX_EMBEDDINGS_BYTES:
            raise Unavailable(f"backend {address} answered embeddings over {MAX_EMBEDDINGS_BYTES} bytes")
        parts.append(data)
    return b"".join(parts)


def parse(address: str, req: EmbeddingRequest, raw: bytes) -> EmbeddingResult:
    try:
        obj: Any = json.loads(raw)
        rows = sorted(obj["data"], key=lambda d: int(d["index"]))
        vectors = np.array([row["embedding"] for row in rows], dtype=np.float32)
    except (ValueError, KeyError, TypeError) as exc:
        raise Unavailable(
            f"backend {address} answered embeddings that are not OpenAI's shape: {exc}"
        ) from exc
    if vectors.ndim != 2 or vectors.shape[0] != len(req.texts) or not np.isfinite(vectors).all():
        raise Unavailable(
            f"backend {address} answered {vectors.shape[0] if vectors.ndim else 0} vectors of mixed or "
            f"non-numeric values for {len(req.texts)} texts"
        )
    usage = obj.get("usage") or {}
    tokens = usage.get("prompt_tokens")
    if isinstance(tokens, int) and tokens >= 0:
        return EmbeddingResult(vectors, tokens)
    return EmbeddingResult(vectors, sum(estimate_tokens(t) for t in req.texts), True)
