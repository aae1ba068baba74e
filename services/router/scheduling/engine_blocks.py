"""The KV-cache blocks each engine really holds, as its KV events said (the precise prefix
scorer's index), per (endpoint, model).

Fed by the router's event subscribers (services/router/kv_events.py), one per endpoint per router
process, on the router's event loop: the hot path reads plain dicts, with no lock and no other
process involved. Bounded: at most ``max_blocks`` hashes per (endpoint, model), the oldest
stored dropped first past that.

An entry is *live* (trusted by the scorer) once it has seen a BlockStored (which also tells the
engine's block size) and is not resyncing. When events were lost and could not be replayed, the
entry is cleared and resyncs for ``resync_s``: the engine may still hold blocks announced in the
lost batches, and until its cache has turned over the approximate scorer decides for it.
An engine restart (its sequence numbers start again) or AllBlocksCleared empties the entry; an
empty cache is exactly what the engine has then, so the entry stays live.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence

from services.common.kv_blocks import BlockHasher, external_hash
from services.common.kv_events_wire import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch


class EndpointBlocks:
    """The blocks of one (endpoint, model)."""

    __slots__ = ("block_size", "blocks", "cleared", "removed", "resync_until", "stored")

    def __init__(self) -> None:
        self.blocks: OrderedDict[int, None] = OrderedDict()  # 64-bit block hash, oldest stored first
        self.block_size = 0  # learnt from BlockStored; 0 = nothing heard yet
        self.resync_until = 0.0
        self.stored = self.removed = self.cleared = 0  # events applied (for metrics and tests)

    def matched(self, hashes: Sequence[int]) -> int:
        """Leading blocks of ``hashes`` the engine holds (a chain: the first miss ends it)."""
        return longest_matches([self], hashes)[0]

    def clear(self) -> None:
        self.blocks.clear()


class EngineBlockIndex:
    def __init__(
        self, max_blocks: int = 262_144, resync_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_blocks < 1 or resync_s < 0:
            raise ValueError("max_blocks must be >= 1 and resync_s >= 0")
        self.max_blocks = max_blocks
        self.resync_s = resync_s
        self._clock = clock
        self._entries: dict[tuple[str, str], EndpointBlocks] = {}

    # --- the scorer's side -------------------------------------------------------------------
    def live(self, endpoint: str, model: str) -> EndpointBlocks | None:
        """The entry to trust for ``model`` at ``endpoint``, or None (score it approximately).
        An engine that publishes without the model in its topic is found under model ""."""
        entry = self._entries.get((endpoint, model)) or self._entries.get((endpoint, ""))
        if entry is None or entry.block_size == 0:
            return None
        if entry.resync_until:
            if self._clock() < entry.resync_until:
                return None
            entry.resync_until = 0.0
        return entry

    def any_live(self) -> bool:
        return any(e.block_size for e in self._entries.values())

    # --- the subscriber's side (it tracks the stream's sequence numbers) ----------------------
    def apply(self, endpoint: str, model: str, batch: EventBatch) -> None:
        """Applies one batch, in stream order."""
        entry = self._entry(endpoint, model)
        blocks, cap = entry.blocks, self.max_blocks
        for ev in batch.events:
            if isinstance(ev, BlockStored):
                if ev.medium not in (None, "GPU") or ev.lora_name:
                    continue  # other tiers and adapters hash differently: not what we look up
                entry.block_size = ev.block_size
                for h in ev.block_hashes:
                    blocks[external_hash(h)] = None
                entry.stored += 1
                while len(blocks) > cap:
                    blocks.popitem(last=False)
            elif isinstance(ev, BlockRemoved):
                for h in ev.block_hashes:
                    blocks.pop(external_hash(h), None)
                entry.removed += 1
            elif isinstance(ev, AllBlocksCleared):
                entry.clear()
                entry.cleared += 1

    def restart(self, endpoint: str) -> None:
        """The engine restarted: its caches are empty, and so is what we know of them."""
        for key, entry in self._entries.items():
            if key[0] == endpoint:
                entry.clear()

    def lost(self, endpoint: str) -> None:
        """Some of the endpoint's events are gone for good: start over, and resync."""
        until = self._clock() + self.resync_s
        for key, entry in self._entries.items():
            if key[0] == endpoint:
                entry.clear()
                entry.resync_until = until

    def size(self, endpoint: str) -> int:
        """Block hashes held for the endpoint, all models together."""
        return sum(len(e.blocks) for k, e in self._entries.items() if k[0] == endpoint)

    def forget(self, endpoint: str) -> None:
        for key in [k for k in self._entries if k[0] == endpoint]:
            del self._entries[key]

    def entry(self, endpoint: str, model: str) -> EndpointBlocks | None:
        return self._entries.get((endpoint, model))

    def _entry(self, endpoint: str, model: str) -> EndpointBlocks:
        entry = self._entries.get((endpoint, model))
        if entry is None:
            entry = self._entries[(endpoint, model)] = EndpointBlocks()
        return entry


Batch = tuple[tuple[int, ...], int, int]  # (block hashes, tokens so far, position in the source)


class ChainState:
    """Where a prompt's block chain stands after some of its text: the last full block's digest,
    the tokens after it (a partial block), the tokens so far, and the 64-bit hashes of the blocks
    the last chunk completed."""

    __slots__ = ("hashes", "leftover", "parent", "sid", "tokens")

    def __init__(
        self, sid: int, parent: bytes, leftover: tuple[int, ...], tokens: int, hashes: tuple[int, ...]
    ):
        self.sid, self.parent, self.leftover, self.tokens, self.hashes = sid, parent, leftover, tokens, hashes


class ChainMemo:
    """(chain state, next text chunk) -> the next state, for one block size: bounded LRU.

    Prompts that share a system prompt share its chunks (the tokenizer cuts the same text the
    same way), so after the first time a shared prefix costs one dict lookup per chunk (~500
    characters) instead of tokenizing it, slicing it into blocks and looking each block up."""

    def __init__(
        self, hasher: BlockHasher, chunk_ids: Callable[[str], Sequence[int]], max_states: int = 65_536
    ):
        self.hasher = hasher
        self.root = ChainState(0, hasher.root, (), 0, ())
        self._chunk_ids = chunk_ids
        self._states: OrderedDict[tuple[int, str], ChainState] = OrderedDict()
        self._max = max_states
        self._next_sid = 1

    def step(self, state: ChainState, chunk: str) -> ChainState:
        key = (state.sid, chunk)
        nxt = self._states.get(key)
        if nxt is not None:
            self._states.move_to_end(key)
            return nxt
        ids = self._chunk_ids(chunk)
        buf, bs, digest = state.leftover + tuple(ids), self.hasher.block_size, self.hasher.digest
        parent, hashes = state.parent, []
        full = len(buf) // bs
        for i in range(full):
            parent = digest(parent, buf[i * bs : (i + 1) * bs])
            hashes.append(int.from_bytes(parent[-8:], "big"))
        nxt = ChainState(self._next_sid, parent, buf[full * bs :], state.tokens + len(ids), tuple(hashes))
        self._next_sid += 1
        self._states[key] = nxt
        if len(self._states) > self._max:
            self._states.popitem(last=False)  # its descendants become unreachable and age out too
        return nxt

    def text_blocks(
        self, prompt: str, text_chunks: Callable[[str], Iterable[tuple[str, int]]]
    ) -> Iterator[Batch]:
        """(hashes of the blocks a chunk completed, tokens so far, offset after the chunk)."""
        state = self.root
        for chunk, end in text_chunks(prompt):
            state = self.step(state, chunk)
            yield state.hashes, state.tokens, end

    def token_blocks(self, tokens: Sequence[int]) -> Iterator[Batch]:
        """The same for token ids given by the caller, one block at a time."""
        hasher, bs = self.hasher, self.hasher.block_size
        parent = hasher.root
        for i in range(len(tokens) // bs):
            parent = hasher.digest(parent, tuple(tokens[i * bs : (i + 1) * bs]))
            yield (int.from_bytes(parent[-8:], "big"),), (i + 1) * bs, (i + 1) * bs


class PromptChain:
    """A prompt's block hashes, as the engine hashes them, produced lazily and in order:
    :func:`longest_matches` stops at the first block no engine holds, so a prompt's unique tail
    (a user's question after a shared system prompt) is never tokenized or hashed, only counted
    (the score is a fraction of the prompt's blocks).

    ``batches`` yields (block hashes, tokens so far, position in the source); ``count(position)``
    counts the tokens from there to the end."""

    def __init__(
        self, batches: Iterable[Batch], count: Callable[[int], int], block_size: int, max_blocks: int
    ):
        self._batches, self._count, self._block_size, self._max = batches, count, block_size, max_blocks
        self._tokens = self._position = 0
        self._done = False  # walked to the end, or to max_blocks

    def __iter__(self) -> Iterator[int]:
        left = self._max
        for hashes, tokens, position in self._batches:
            self._tokens, self._position = tokens, position
            for h in hashes:
                if left == 0:
                    self._done = True
                    return
                yield h
                left -= 1
        self._done = True

    def block_count(self) -> int:
        """The prompt's full blocks (at most ``max_blocks``), after a walk over some of them."""
        tokens = self._tokens if self._done else self._tokens + self._count(self._position)
        return min(tokens // self._block_size, self._max)


def longest_matches(entries: Sequence[EndpointBlocks], chain: Iterable[int]) -> list[int]:
    """Leading blocks of ``chain`` each entry holds, walking the chain once for all of them and
    stopping at the first block none holds (blocks chain, so a miss ends an entry's prefix)."""
    matched = [0] * len(entries)
    active = [(i, e.blocks) for i, e in enumerate(entries)]
    for h in chain:
        active = [(i, blocks) for i, blocks in active if h in blocks]
        if not active:
            break
        for i, _ in active:
            matched[i] += 1
    return matched
