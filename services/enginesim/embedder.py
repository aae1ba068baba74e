"""An embedding model in the simulator: deterministic vectors from the text, timed by the engine.

Each text of a batch is one sequence of the model's engine with one output token: it waits in
the engine's queue, is prefilled in a step (the latency profile prices its tokens) and leaves,
so queueing, batching, GPU sharing and the metrics behave as for a generation model.

The vector is a hashed bag of features of the text: its lower-cased words (the simulator's
tokenizer) and the character pairs inside each word (so Chinese text, whose words are whole
runs of characters, shares features with text about the same thing). Each feature adds +-1 at
a position chosen by its SHA-256; the sum is L2-normalised. The same text always gives the same
vector, and texts sharing words have a high cosine similarity, which is what a retriever needs.
"""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np

from .engine import ModelEngine
from .sequence import GenerationRequest, Sequence
from .text import tokenize

BIGRAM_WEIGHT = 0.5


def _features(text: str) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for word in tokenize(text.lower()):
        out.append((word, 1.0))
        out.extend((word[i : i + 2], BIGRAM_WEIGHT) for i in range(len(word) - 1))
    return out


def vector(text: str, dimensions: int) -> np.ndarray:
    """The text's vector: float32, unit length (a text with no features gets a fixed unit vector)."""
    vec = np.zeros(dimensions, dtype=np.float64)
    for feature, weight in _features(text):
        digest = hashlib.sha256(feature.encode("utf-8", "surrogatepass")).digest()
        index = int.from_bytes(digest[:8], "little") % dimensions
        vec[index] += weight if digest[8] & 1 else -weight
    norm = float(np.linalg.norm(vec))
    if norm == 0.0:
        vec[0], norm = 1.0, 1.0
    return (vec / norm).astype(np.float32)


async def embed(engine: ModelEngine, texts: list[str], request_id: str) -> tuple[np.ndarray, list[int]]:
    """The texts' vectors [N, D] and token counts, once the engine has run each text's step.
    Raises the EngineError a sequence failed with (queue full, unloaded...)."""
    sequences: list[Sequence] = []
    try:
        for text in texts:
            sequences.append(
                engine.submit(GenerationRequest(prompt=text, max_tokens=1, request_id=request_id))
            )
        await asyncio.gather(*(seq.collect() for seq in sequences))
    finally:
        for seq in sequences:
            seq.cancel()  # no-op when finished; frees the slot if the client went away
    dims = engine.spec.dimensions
    vectors = np.stack([vector(text, dims) for text in texts])
    return vectors, [seq.input_tokens for seq in sequences]
