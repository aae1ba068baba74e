"""Value types of the scheduler: endpoint candidates, the request being placed, the decision.

They are built once per request on the hot path, so they are slotted dataclasses with no
validation work beyond what the constructor does anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

REALTIME = "realtime"
INTERACTIVE = "interactive"
BATCH = "batch"
SLO_CLASSES = (REALTIME, INTERACTIVE, BATCH)


def chained_block_hashes(tokens: Sequence[object], block_size: int, max_blocks: int = 0) -> tuple[int, ...]:
    """Chained hashes of the full blocks of ``tokens`` (as the engine's KV cache hashes them):
    a block's hash covers its tokens and the hash of the block before it, so equal hashes mean
    equal prefixes. At most ``max_blocks`` leading blocks when > 0."""
    n = len(tokens) // block_size
    if max_blocks > 0:
        n = min(n, max_blocks)
    hashes = [0] * n
    parent = 0
    for i in range(n):
        start = i * block_size
        parent = hash((parent, tuple(tokens[start : start + block_size])))
        hashes[i] = parent
    return tuple(hashes)


def text_block_hashes(text: str, block_chars: int, max_blocks: int = 0) -> tuple[int, ...]:
    """Chained hashes of the full ``block_chars``-character blocks of ``text``.

    Used when no token ids are given. Tokenizing in Python (the simulator's regex) costs about
    140 ns a token, 0.4 ms for a 3k-token prompt: 40% of the router's whole budget, for
    nothing, since only "how long a prefix do two prompts share" matters here, and character
    blocks answer that at ~1/1000 of the cost (str hashing is C)."""
    n = len(text) // block_chars
    if max_blocks > 0:
        n = min(n, max_blocks)
    hashes = [0] * n
    parent = 0
    for i in range(n):
        start = i * block_chars
        parent = hash((parent, text[start : start + block_chars]))
        hashes[i] = parent
    return tuple(hashes)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One endpoint able to serve the request's model, as the pool's watch stream last saw it.

    Load figures are per (endpoint, model). ``max_running`` is the engine's running-sequence
    limit (0 = unknown); ``recent_ttft_s`` is the pool's EWMA of time to first token (0 = none).
    ``kv_cache_known`` False means ``kv_cache_fraction`` is a placeholder, not a measurement.
    ``own_at_snapshot`` is this router's in-flight count at the endpoint when the figures
    arrived (-1 = unknown): what we dispatched or finished since then corrects the stale figures.
    """

    name: str
    address: str = ""
    model: str = ""
    ready: bool = True
    healthy: bool = True
    waiting: int = 0
    active: int = 0
    max_running: int = 0
    kv_cache_fraction: float = 0.0
    gpu_utilization: float = 0.0
    recent_ttft_s: float = 0.0
    recent_latency_s: float = 0.0
    labels: tuple[tuple[str, str], ...] = ()
    own_at_snapshot: int = -1
    kind: str = "triton"  # the engine protocol: "triton" (gRPC) or "openai" (HTTP)
    kv_cache_known: bool = True  # False: the engine exports no KV figure (TGI, Ollama)
    prefix_hit_rate: float = -1.0  # the engine's recent prefix-cache hit rate; -1 = unknown


@dataclass(frozen=True, slots=True)
class SchedulingRequest:
    """What the scheduler knows about one request. Give ``tokens`` when a real tokenizer ran;
    otherwise the ``prompt`` text is hashed in character blocks (see ``text_block_hashes``)."""

    model: str
    agent: str = ""
    agent_type: str = ""
    slo_class: str = INTERACTIVE
    session_id: str = ""
    prompt: str = ""
    tokens: Sequence[object] = ()
    # Block hashes, computed once per request and shared by the prefix scorer and record().
    _hashes: dict[tuple[int, int], tuple[int, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def block_hashes(self, block_tokens: int, max_blocks: int, chars_per_token: int) -> tuple[int, ...]:
        """Chained prefix-block hashes: of ``tokens`` in ``block_tokens`` blocks when given,
        else of the prompt in ``block_tokens * chars_per_token``-character blocks."""
        key = (block_tokens, max_blocks, chars_per_token)
        hit = self._hashes.get(key)
        if hit is None:
            if self.tokens:
                hit = chained_block_hashes(self.tokens, block_tokens, max_blocks)
            else:
                hit = text_block_hashes(self.prompt, block_tokens * chars_per_token, max_blocks)
            self._hashes[key] = hit
        return hit


class Outcome(StrEnum):
    """How a scheduling cycle ended. The caller maps NO_READY to UNAVAILABLE and SATURATED to
    flow control (queue the request, or shed it)."""

    PICKED = "picked"
    NO_READY = "no_ready"  # no candidate serves the model / is ready / is healthy
    SATURATED = "saturated"  # candidates exist but every one is over its load thresholds


@dataclass(frozen=True, slots=True)
class Decision:
    """The result of ``Scheduler.pick``. ``endpoint`` is None unless ``outcome`` is PICKED.

    ``scores`` holds the chosen endpoint's score per scorer (unweighted, in [0, 1]) and the
    weighted ``total``, for logs and debugging."""

    outcome: Outcome
    profile: str
    endpoint: Candidate | None = None
    scores: tuple[tuple[str, float], ...] = ()
    total: float = 0.0
    considered: int = 0  # candidates left after filtering
    reason: str = ""  # which filter emptied the list, when not PICKED

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.PICKED
