"""The seam under the Dispatch stage: an `Engine` streams one generation from one endpoint.

Two kinds implement it: Triton's gRPC protocol (triton.py, TensorRT-LLM ensemble tensors) and
the OpenAI HTTP API (openai_engine.py: vLLM, SGLang, TGI, Ollama, Triton's OpenAI frontend).
The dispatcher picks one by the endpoint's kind; scheduling, failover and accounting above it
are the same for both. The contract every engine keeps:

- chunks arrive until one with ``final=True``; a stream that ends without it is `Unavailable`;
- an error before any text is `Unavailable` (the dispatcher may retry elsewhere) unless the
  engine refused the request itself (`InvalidArgument`: retrying would be refused again);
- closing the iterator early (the caller went away) cancels the upstream generation;
- token counts are the engine's when it gives them; otherwise they are counted from the text
  and the chunk says ``estimated=True``;
- ``req.on_sent``, when set, is called once the request is on its way (before waiting for the
  engine's answer), so work that must precede the first token (the call's durable journal entry)
  overlaps the engine's own; if it raises, the engine request is cancelled and the error raised.
  An engine that does not call it leaves it to the dispatcher, before the first chunk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

TRITON = "triton"
OPENAI = "openai"
KINDS = (TRITON, OPENAI)

CHARS_PER_TOKEN = 4  # a size estimate where no engine count exists (admission, estimated usage)


def estimate_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


@dataclass(frozen=True)
class EngineRequest:
    model: str  # the engine's model name
    prompt: str
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 0.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    request_id: str = ""
    stream: bool = True  # token by token (Triton: only decoupled models can)
    # Called once the request went out (the contract above); not part of what is asked.
    on_sent: Callable[[], None] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class EngineChunk:
    text: str
    final: bool
    input_tokens: int | None = None
    output_tokens: int | None = None
    estimated: bool = False  # the counts were estimated from text: the engine gave none


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str  # the engine's model name
    texts: tuple[str, ...]
    request_id: str = ""


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: np.ndarray  # float32 [N, D]: row i is the vector of text i
    input_tokens: int
    estimated: bool = False  # the engine gave no token counts: estimated from the texts
    per_text: tuple[int, ...] | None = None  # the engine's count for each text, when it gives them


class Embedder(Protocol):
    """An engine that embeds too. Errors as for generations: `Unavailable` is retryable on
    another endpoint, `InvalidArgument` is the engine refusing the request itself."""

    async def embed(self, address: str, req: EmbeddingRequest, timeout: float | None) -> EmbeddingResult: ...


class Engine(Protocol):
    def stream(self, address: str, req: EngineRequest, timeout: float | None) -> AsyncIterator[EngineChunk]:
        """The generation's chunks from the endpoint at `address` (see the module's contract)."""
        ...

    async def close(self) -> None: ...
