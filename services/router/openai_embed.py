"""Embeddings from an OpenAI-compatible engine (vLLM, SGLang, TGI, Ollama): one
`POST {base}/v1/embeddings` with the batch, vectors as floats, usage from the engine (estimated
from the texts when it sends none). The answer is read up to a bound, checked (one vector per
text, all of one length, numbers only) and returned in the texts' order."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import numpy as np

from services.common.errors import Unavailable
from services.router.engine import EmbeddingRequest, EmbeddingResult, estimate_tokens
from services.router.engine_http import EngineSession, call_timeout, check_identity, failure

MAX_EMBEDDINGS_BYTES = 64 << 20  # 2048 vectors of a few thousand floats, as JSON


async def embed(
    target: EngineSession, address: str, req: EmbeddingRequest, timeout: float | None, errors
) -> EmbeddingResult:
    """`errors(status, body)` turns an HTTP error into the engine seam's exception."""
    headers = {"x-request-id": req.request_id} if req.request_id else None
    body = {"model": req.model, "input": list(req.texts), "encoding_format": "float"}
    try:
        async with target.session.post(
            target.embeddings,
            json=body,
            headers=headers,
            timeout=call_timeout(timeout),
            allow_redirects=False,
        ) as response:  # leaving it releases the connection: to the pool when the body was read whole
            if (status := response.status) == 200:
                check_identity(address, response)
            raw = await _read(response, address)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise Unavailable(f"backend {address} failed: {failure(exc)}") from exc
    if status != 200:
        raise errors(status, raw[: 64 << 10])
    return parse(address, req, raw)


async def _read(response: aiohttp.ClientResponse, address: str) -> bytes:
    parts, size = [], 0
    async for data in response.content.iter_any():
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
