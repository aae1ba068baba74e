"""What the scheduler remembers between requests: prefix blocks and sessions per endpoint,
TTFT EWMAs, and the router's own in-flight counts.

It is shared by every profile (a request placed by the low-latency profile still warms the
prefix cache of the endpoint it went to), so it lives here and not inside plugin instances.
All structures are bounded: the router runs for weeks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields

from services.common.kv_blocks import BlockHasher, count_sim_tokens, sim_chunk_ids, sim_text_chunks
from services.router.scheduling.engine_blocks import (
    ChainMemo,
    EndpointBlocks,
    EngineBlockIndex,
    PromptChain,
    longest_matches,
)
from services.router.scheduling.types import Candidate, SchedulingRequest

# Tokenizers the precise prefix scorer can hash prompts with (it must be the engine's own): where
# it cuts a prompt in chunks, a chunk's token ids, and a token count for the rest of a prompt.
TOKENIZERS = {"enginesim": (sim_text_chunks, sim_chunk_ids, count_sim_tokens)}


@dataclass(frozen=True)
class MemoryConfig:
    """The ``memory:`` section of the profiles YAML."""

    prefix_block_tokens: int = 64  # TRT-LLM's default tokens_per_block, as the simulator uses
    prefix_max_blocks: int = 128  # leading blocks hashed per request (8k tokens at 64)
    # Prompts given as text are cut into blocks of prefix_block_tokens x this many characters
    # (about 4 characters a token in English prose).
    prefix_chars_per_token: int = 4
    prefix_lru_blocks: int = 65_536  # block hashes remembered per endpoint
    sessions_max: int = 100_000
    ttft_ewma_alpha: float = 0.2
    # The precise prefix scorer (engines' KV events): the engines' tokenizer and block hash seed
    # (vLLM's PYTHONHASHSEED; the hash is sha256_cbor), the prompt tokens hashed per request, the
    # block hashes kept per (endpoint, model), and how long an index that lost events is not
    # trusted while it rebuilds.
    kv_events_tokenizer: str = "enginesim"
    kv_events_hash_seed: str = "0"
    kv_events_max_tokens: int = 32_768
    kv_events_max_blocks: int = 262_144
    kv_events_resync_s: float = 30.0

    def __post_init__(self) -> None:
        for name in (
            "prefix_block_tokens",
            "prefix_max_blocks",
            "prefix_chars_per_token",
            "prefix_lru_blocks",
            "sessions_max",
            "kv_events_max_tokens",
            "kv_events_max_blocks",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"memory.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.ttft_ewma_alpha <= 1.0:
            raise ValueError(f"memory.ttft_ewma_alpha must be in (0, 1], got {self.ttft_ewma_alpha}")
        if self.kv_events_tokenizer not in TOKENIZERS:
            raise ValueError(
                f"memory.kv_events_tokenizer must be one of {sorted(TOKENIZERS)}, got {self.kv_events_tokenizer!r}"
            )
        if self.kv_events_resync_s < 0:
            raise ValueError(f"memory.kv_events_resync_s must be >= 0, got {self.kv_events_resync_s}")

    @staticmethod
    def from_mapping(raw: Mapping[str, object] | None) -> MemoryConfig:
        raw = raw or {}
        known = {f.name for f in fields(MemoryConfig)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"memory: unknown key(s) {unknown}; known: {sorted(known)}")
        return MemoryConfig(**raw)  # type: ignore[arg-type]


class PrefixIndex:
    """Per endpoint, an LRU set of the prompt-block hashes recently sent there.

    A prompt's blocks are touched tail first so its *leading* blocks end up most recent: they
    are the ones other prompts share, and losing a leading block breaks the whole chain."""

    def __init__(self, max_blocks_per_endpoint: int) -> None:
        self._max = max_blocks_per_endpoint
        self._blocks: dict[str, OrderedDict[int, None]] = {}

    def record(self, endpoint: str, hashes: tuple[int, ...]) -> None:
        if not hashes:
            return
        lru = self._blocks.get(endpoint)
        if lru is None:
            lru = self._blocks[endpoint] = OrderedDict()
        for h in reversed(hashes):
            lru[h] = None
            lru.move_to_end(h)
        while len(lru) > self._max:
            lru.popitem(last=False)

    def matched(self, endpoint: str, hashes: tuple[int, ...]) -> int:
        """How many leading blocks of ``hashes`` the endpoint has (hashes chain, so stop at the
        first miss)."""
        lru = self._blocks.get(endpoint)
        if not lru:
            return 0
        n = 0
        for h in hashes:
            if h not in lru:
                break
            n += 1
        return n

    def forget(self, endpoint: str) -> None:
        self._blocks.pop(endpoint, None)

    def size(self, endpoint: str) -> int:
        lru = self._blocks.get(endpoint)
        return len(lru) if lru else 0


class SessionTable:
    """Session id -> the endpoint its last request went to (bounded LRU)."""

    def __init__(self, max_sessions: int) -> None:
        self._max = max_sessions
        self._sessions: OrderedDict[str, str] = OrderedDict()

    def record(self, session_id: str, endpoint: str) -> None:
        if not session_id:
            return
        self._sessions[session_id] = endpoint
        self._sessions.move_to_end(session_id)
        if len(self._sessions) > self._max:
            self._sessions.popitem(last=False)

    def get(self, session_id: str) -> str:
        return self._sessions.get(session_id, "") if session_id else ""

    def __len__(self) -> int:
        return len(self._sessions)


class LatencyTracker:
    """EWMA of the TTFT the router measured per endpoint."""

    def __init__(self, alpha: float) -> None:
        self._alpha = alpha
        self._ewma: dict[str, float] = {}

    def observe(self, endpoint: str, seconds: float) -> None:
        if seconds < 0:
            return
        old = self._ewma.get(endpoint)
        self._ewma[endpoint] = seconds if old is None else old + self._alpha * (seconds - old)

    def get(self, endpoint: str) -> float:
        """0.0 when never observed."""
        return self._ewma.get(endpoint, 0.0)

    def forget(self, endpoint: str) -> None:
        self._ewma.pop(endpoint, None)


class SchedulerMemory:
    """Everything plugins read across requests. The Scheduler's feedback hooks write it."""

    def __init__(self, config: MemoryConfig | None = None) -> None:
        self.config = config or MemoryConfig()
        self.prefix = PrefixIndex(self.config.prefix_lru_blocks)
        self.sessions = SessionTable(self.config.sessions_max)
        self.latency = LatencyTracker(self.config.ttft_ewma_alpha)
        # Requests this router has dispatched and not yet released, per (endpoint, model): the
        # pool's figures are per model too (an endpoint may serve several). They arrive by
        # scrape (seconds old); this is exact for our own traffic.
        self.inflight: dict[tuple[str, str], int] = {}
        cfg = self.config
        self.engine_blocks = EngineBlockIndex(cfg.kv_events_max_blocks, cfg.kv_events_resync_s)
        self._text_chunks, self._chunk_ids, self._count_tokens = TOKENIZERS[cfg.kv_events_tokenizer]
        self._chains: dict[int, ChainMemo] = {}  # per block size

    def engine_prefix_matches(
        self, request: SchedulingRequest, entries: Sequence[EndpointBlocks]
    ) -> tuple[list[int], int]:
        """(leading prompt blocks each entry's engine holds, the prompt's blocks), the prompt
        hashed as the engine hashes it. The entries share one block size. One walk for all
        entries, up to the first block none holds (see ``PromptChain``)."""
        chain = self.prompt_chain(request, entries[0].block_size)
        matched = longest_matches(entries, chain)
        return matched, chain.block_count()

    def engine_block_hashes(self, request: SchedulingRequest, block_size: int) -> tuple[int, ...]:
        """All of the prompt's block hashes as the engine hashes them (no early stop)."""
        return tuple(self.prompt_chain(request, block_size))

    def prompt_chain(self, request: SchedulingRequest, block_size: int) -> PromptChain:
        """The prompt's engine block chain (its tokenizer, its block size, vLLM's hash), lazily."""
        memo = self._chains.get(block_size)
        if memo is None:
            hasher = BlockHasher(block_size, self.config.kv_events_hash_seed)
            memo = self._chains[block_size] = ChainMemo(hasher, self._chunk_ids)
        max_blocks = self.config.kv_events_max_tokens // block_size
        if request.tokens:
            tokens = request.tokens
            return PromptChain(memo.token_blocks(tokens), lambda at: len(tokens) - at, block_size, max_blocks)
        prompt, count = request.prompt, self._count_tokens
        batches = memo.text_blocks(prompt, self._text_chunks)
        return PromptChain(batches, lambda at: count(prompt[at:]), block_size, max_blocks)

    def own(self, endpoint: str, model: str) -> int:
        """This router's in-flight requests for `model` at `endpoint`."""
        return self.inflight.get((endpoint, model), 0)

    def block_hashes(self, request: SchedulingRequest) -> tuple[int, ...]:
        cfg = self.config
        return request.block_hashes(
            cfg.prefix_block_tokens, cfg.prefix_max_blocks, cfg.prefix_chars_per_token
        )

    def load(self, c: Candidate) -> int:
        """Best estimate of requests at ``c``. The scrape includes other routers' traffic but is
        stale; our own count is fresh but partial. When we know our count at the scrape, the
        scrape is moved by what we dispatched/finished since; otherwise take the larger."""
        scraped = c.waiting + c.active
        local = self.inflight.get((c.name, c.model), 0)
        if c.own_at_snapshot >= 0:
            return max(0, scraped + local - c.own_at_snapshot, local)
        return scraped if scraped >= local else local

    def waiting(self, c: Candidate) -> int:
        """Estimated queue at ``c``: requests beyond its running limit count as waiting."""
        if c.max_running > 0:
            if c.own_at_snapshot >= 0:
                return max(0, self.load(c) - c.max_running)
            over = self.inflight.get((c.name, c.model), 0) - c.max_running
            if over > c.waiting:
                return over
        return c.waiting

    def forget(self, endpoints: Iterable[str]) -> None:
        """Drop what is known about endpoints that left the pool."""
        for name in endpoints:
            self.prefix.forget(name)
            self.engine_blocks.forget(name)
            self.latency.forget(name)
            for key in [k for k in self.inflight if k[0] == name]:
                del self.inflight[key]
