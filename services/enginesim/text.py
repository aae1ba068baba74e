"""Deterministic stand-ins for a tokenizer and a sampler.

Tokenizer: a token is a run of word characters (``\\w+``) or one punctuation character
(``[^\\w\\s]``); whitespace is free. A prompt counts at least 1 token (the BOS token a real
tokenizer adds). English prose comes out within ~20% of a Llama-3 tokenizer count, which is
all the latency and KV models need.

Generator: output tokens are drawn from a fixed vocabulary with a PRNG seeded from a hash of
the prompt (and of ``seed`` when ``temperature > 0``). So greedy requests (temperature 0) give
the same text for the same prompt whatever the seed, and sampled requests give the same text
for the same prompt and seed, as seeded sampling does in TensorRT-LLM. The token id of a
generated token is its index in ``VOCAB``; that is what ``end_id`` is compared with.
"""

from __future__ import annotations

import hashlib
import random
import re

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")

# Index = token id. Punctuation tokens attach to the previous word (no leading space).
# fmt: off
VOCAB: tuple[str, ...] = (
    ".", ",", "the", "a", "model", "agent", "token", "request", "server", "engine", "batch",
    "queue", "cache", "block", "prompt", "answer", "system", "user", "tool", "call", "result",
    "value", "state", "step", "time", "data", "policy", "route", "budget", "cost", "audit",
    "and", "or", "of", "to", "in", "on", "with", "for", "is", "are", "was", "will", "can",
    "should", "might", "not", "each", "every", "one", "two", "three", "first", "next", "last",
    "fast", "slow", "small", "large", "new", "old", "good", "simple", "clear", "safe", "ready",
    "loaded", "running", "waiting", "sent", "received", "kept", "used", "free", "full",
)
# fmt: on
_PUNCTUATION = frozenset({".", ","})


def tokenize(text: str) -> list[str]:
    """The tokens of ``text`` (what the KV prefix cache hashes, block by block)."""
    return _TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    """Number of prompt tokens the simulator charges for ``text`` (>= 1)."""
    return max(1, len(tokenize(text)))


def _rng(prompt: str, seed: int, temperature: float) -> random.Random:
    material = prompt.encode("utf-8", "surrogatepass")
    if temperature > 0:
        material += b"\x00seed=" + str(seed).encode()
    digest = hashlib.sha256(material).digest()
    return random.Random(int.from_bytes(digest[:16], "little"))


SCRIPTED_ID = len(VOCAB)  # the id of a scripted piece: outside the vocabulary, never an end_id
END_OF_SCRIPT = -2  # a scripted answer is complete: the sequence stops ("stop")
_PIECE_RE = re.compile(r"\s*(?:\w+|[^\w\s])")


def script_tokens(script: str) -> int:
    """How many tokens a scripted answer streams as."""
    return len(_PIECE_RE.findall(script))


class TextGenerator:
    """Yields (token_id, text piece) pairs for one sequence, deterministically; with a `script`,
    the script's pieces (their concatenation is the script, spaces kept) and then END_OF_SCRIPT."""

    def __init__(
        self, prompt: str, seed: int = 0, temperature: float = 0.0, script: str | None = None
    ) -> None:
        self._rng = _rng(prompt, seed, temperature)
        self._prev_punct = True  # no punctuation at the very start
        self._script = _PIECE_RE.findall(script) if script else None

    def next_token(self) -> tuple[int, str]:
        if self._script is not None:
            return (SCRIPTED_ID, self._script.pop(0)) if self._script else (END_OF_SCRIPT, "")
        while True:
            token_id = self._rng.randrange(len(VOCAB))
            word = VOCAB[token_id]
            # Avoid ", ." runs so the text reads like (meaningless) prose.
            if word in _PUNCTUATION and self._prev_punct:
                continue
            break
        self._prev_punct = word in _PUNCTUATION
        # Words carry their leading space (like SentencePiece's "▁"), so prompt + completion
        # and the concatenated stream deltas read as text.
        piece = word if word in _PUNCTUATION else " " + word
        return token_id, piece
