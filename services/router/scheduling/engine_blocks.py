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
from collections.abc import Callable, Sequence

from services.common.kv_blocks import external_hash
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
        blocks = self.blocks
        n = 0
        for h in hashes:
            if h not in blocks:
                break
            n += 1
        return n

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
