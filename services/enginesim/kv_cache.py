"""Paged KV cache with prefix reuse, as TensorRT-LLM's block manager does it (no gRPC, no time).

A sequence's KV cache lives in fixed-size blocks of ``block_size`` tokens. Full blocks of a
prompt are identified by a chained hash (the block's tokens and the hash of the block before
it), so two prompts share a block only when everything up to and including it is the same.
Such blocks are *shared*: a later request with the same prefix reuses them instead of
prefilling those tokens again. When no sequence references a shared block any more it stays
cached, and is evicted least-recently-used first when a new sequence needs the room.

Blocks that cannot be shared (a prompt's partial last block, the generated tokens) are
*private* to their sequence and freed when it ends.

Admission reserves every block a sequence can ever need (prompt + max_tokens), like
TRT-LLM's default GUARANTEED_NO_EVICT capacity scheduler, so a running sequence never stalls
for memory. Counts follow TRT-LLM's ``nv_trt_llm_kv_cache_block_metrics``:
``used`` = blocks referenced by running sequences, ``free`` = the rest (cached-but-unreferenced
blocks count as free: they are reclaimable), ``reused`` = blocks served from the cache so far.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from services.common.kv_events_wire import AllBlocksCleared, BlockRemoved, BlockStored, KvEvent


def prefix_block_hashes(tokens: Sequence[str], block_size: int) -> tuple[int, ...]:
    """Chained hashes of the *full* blocks of ``tokens`` (a partial tail block is not shareable)."""
    hashes: list[int] = []
    parent = 0
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = hash((parent, tuple(tokens[start : start + block_size])))
        hashes.append(parent)
    return tuple(hashes)


@dataclass
class KvAllocation:
    """The blocks one sequence holds. ``reused`` of its ``shared`` blocks came from the cache."""

    shared: tuple[int, ...]  # block hashes, referenced once each by this sequence
    private: int
    reused: int

    @property
    def total(self) -> int:
        return len(self.shared) + self.private


class KvBlockCache:
    def __init__(
        self, capacity_blocks: int, block_size: int, enable_reuse: bool = True, record_events: bool = False
    ) -> None:
        if capacity_blocks < 1 or block_size < 1:
            raise ValueError("capacity_blocks and block_size must be >= 1")
        self.capacity = capacity_blocks
        self.block_size = block_size
        self.enable_reuse = enable_reuse
        self._refs: dict[int, int] = {}  # shared block hash -> running sequences using it
        self._evictable: OrderedDict[int, None] = OrderedDict()  # refs == 0, oldest first
        self._private = 0
        self.reused_total = 0  # blocks served from the cache, cumulative
        self.evicted_total = 0
        # What changed since the last take_events(), as vLLM's KV events (only when recording).
        self._events: list[KvEvent] | None = [] if record_events else None

    def take_events(self) -> list[KvEvent]:
        """The BlockStored/BlockRemoved/AllBlocksCleared events since the last call, in order."""
        events = self._events
        if not events:
            return []
        self._events = []
        return events

    # --- counts ---------------------------------------------------------------------------
    @property
    def used(self) -> int:
        """Blocks referenced by running sequences."""
        return len(self._refs) - len(self._evictable) + self._private

    @property
    def cached(self) -> int:
        """Unreferenced blocks that still hold a reusable prefix."""
        return len(self._evictable)

    @property
    def free(self) -> int:
        """Blocks a new sequence could get (empty ones plus evictable cached ones)."""
        return self.capacity - self.used

    def cached_prefix_blocks(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of ``hashes`` are resident (referenced or cached)."""
        if not self.enable_reuse:
            return 0
        n = 0
        for h in hashes:
            if h not in self._refs:
                break
            n += 1
        return n

    # --- allocation -----------------------------------------------------------------------
    def allocate(
        self, hashes: Sequence[int], total_blocks: int, token_ids: Sequence[int] = ()
    ) -> KvAllocation | None:
        """Reserve ``total_blocks`` for a sequence whose full prompt blocks are ``hashes``.

        Returns None (and changes nothing) when even evicting every cached block would not
        make room. ``total_blocks`` counts every block, shared ones included. ``token_ids`` (the
        prompt's) go into the BlockStored event of the blocks this sequence adds.
        """
        reused = self.cached_prefix_blocks(hashes)
        shared = tuple(hashes) if self.enable_reuse else ()
        new_shared = shared[reused:]
        private = total_blocks - len(shared)
        # Cached blocks this sequence is about to reference cannot be evicted to make room.
        revived = sum(1 for h in shared[:reused] if h in self._evictable)
        needed = len(new_shared) + private
        empty = self.capacity - len(self._refs) - self._private
        if needed > empty + len(self._evictable) - revived:
            return None
        for h in shared[:reused]:
            self._evictable.pop(h, None)
            self._refs[h] += 1
        reusing = set(shared[:reused])
        evicted = []
        while needed > self.capacity - len(self._refs) - self._private:
            victim = next(h for h in self._evictable if h not in reusing)
            del self._evictable[victim]
            del self._refs[victim]
            evicted.append(victim)
            self.evicted_total += 1
        for h in new_shared:
            self._refs[h] = 1
        if self._events is not None:
            self._record(evicted, shared, reused, token_ids)
        self._private += private
        self.reused_total += reused
        return KvAllocation(shared=shared, private=private, reused=reused)

    def _record(self, evicted: list, shared: tuple, reused: int, token_ids: Sequence[int]) -> None:
        events = self._events
        if evicted:
            events.append(BlockRemoved(tuple(evicted)))
        if len(shared) > reused:
            bs = self.block_size
            events.append(
                BlockStored(
                    block_hashes=shared[reused:],
                    parent_block_hash=shared[reused - 1] if reused else None,
                    token_ids=tuple(token_ids[reused * bs : len(shared) * bs]),
                    block_size=bs,
                )
            )

    def release(self, alloc: KvAllocation) -> None:
        """The sequence ended: private blocks are freed, shared ones stay cached (LRU)."""
        self._private -= alloc.private
        for h in alloc.shared:
            refs = self._refs[h] - 1
            self._refs[h] = refs
            if refs == 0:
                self._evictable[h] = None  # most recently used goes to the end

    def reset(self) -> None:
        """Drop everything (the model was unloaded)."""
        self._refs.clear()
        self._evictable.clear()
        self._private = 0
        if self._events is not None:
            self._events = [AllBlocksCleared()]
