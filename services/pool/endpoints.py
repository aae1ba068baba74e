"""The endpoint table: the pool's live state of every Triton endpoint, and its revisions.

Revisions: a counter bumps whenever an endpoint's *observable* state changes (spec, health,
models, or load figures beyond LOAD_EPSILON; not `last_seen`, which moves on every probe).
Each endpoint remembers the revision of its last change and removals leave a bounded list of
tombstones, so a watcher holding revision R gets exactly the endpoints changed after R.
A watcher whose R cannot be replayed (0, older than the tombstones reach, or newer than this
process has issued) gets a snapshot.

The first revision of a process is its start time in microseconds, so revisions keep
increasing across pool restarts: a router resuming with a revision from an earlier process
always lands below the floor and gets a snapshot instead of a wrong delta.

Everything here runs on the event loop; the only other reader is the metrics scrape thread,
which takes `list(...)` copies of immutable states.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

from services.common.errors import NotFound
from services.pool.state import (
    LOADING,
    NO_FIGURES,
    READY,
    UNAVAILABLE,
    UNHEALTHY,
    EndpointSpec,
    EndpointState,
    ModelLoad,
    ModelStatus,
    ProbeResult,
    model_state,
    next_health,
)

LOAD_EPSILON = 0.01  # fractions (KV cache, GPU utilisation) moving less than this are not news
LATENCY_ALPHA = 0.3  # EWMA weight of the newest latency sample (~3 scrapes of memory)
TOMBSTONE_LIMIT = 1024


@dataclass(frozen=True)
class WatchBatch:
    """One WatchEndpoints message, before conversion to protobuf."""

    snapshot: bool
    endpoints: tuple[EndpointState, ...]
    removed: tuple[str, ...]
    revision: int
    # Triton models scaled to zero (or waking) with no READY replica: the full list, every batch.
    scaled_to_zero: tuple[str, ...] = ()


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= LOAD_EPSILON


def materially_changed(old: EndpointState, new: EndpointState) -> bool:
    """Whether a router would want to hear about the difference."""
    if old.spec != new.spec or old.health != new.health or len(old.models) != len(new.models):
        return True
    if not _close(old.gpu_utilization, new.gpu_utilization):
        return True
    for a, b in zip(old.models, new.models, strict=True):
        if (a.name, a.version, a.state, a.waiting, a.active, a.max_running) != (
            b.name,
            b.version,
            b.state,
            b.waiting,
            b.active,
            b.max_running,
        ):
            return True
        if not _close(a.kv_cache_fraction, b.kv_cache_fraction) or abs(a.load_time_s - b.load_time_s) > 1e-3:
            return True
        if a.kv_cache_known != b.kv_cache_known or _rate_moved(a.prefix_hit_rate, b.prefix_hit_rate):
            return True
        if _latency_moved(a.recent_latency_ms, b.recent_latency_ms) or _latency_moved(
            a.recent_ttft_ms, b.recent_ttft_ms
        ):
            return True
    return False


def _load_of(m: ModelStatus) -> ModelLoad:
    return ModelLoad(
        m.waiting,
        m.active,
        m.kv_cache_fraction,
        m.requests,
        m.successes,
        m.request_us,
        m.ttft_ms_sum,
        m.ttft_count,
        max_running=m.max_running,
        kv_cache_known=m.kv_cache_known,
        prefix_queries=m.prefix_queries,
        prefix_hits=m.prefix_hits,
    )


def _rate_moved(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    return not _close(a, b)


def _prefix_hit_rate(old: ModelStatus | None, load: ModelLoad) -> float | None:
    """The engine's recent prefix-cache hit rate: its own gauge when it has one (SGLang), else
    an EWMA of hits over lookups between scrapes (vLLM's counters). Counters that did not move
    keep the last rate; a restarted engine (counters went back) starts over."""
    if load.prefix_hit_rate is not None:
        return min(1.0, max(0.0, load.prefix_hit_rate))
    if load.prefix_queries is None or load.prefix_hits is None:
        return None
    last = old.prefix_hit_rate if old is not None else None
    before_q = old.prefix_queries if old is not None and old.prefix_queries is not None else 0.0
    before_h = old.prefix_hits if old is not None and old.prefix_hits is not None else 0.0
    if load.prefix_queries < before_q or load.prefix_hits < before_h:
        before_q, before_h, last = 0.0, 0.0, None
    looked = load.prefix_queries - before_q
    if looked <= 0:
        return last
    sample = min(1.0, max(0.0, (load.prefix_hits - before_h) / looked))
    return sample if last is None else (1 - LATENCY_ALPHA) * last + LATENCY_ALPHA * sample


def _recent_latency(old: ModelStatus | None, load: ModelLoad) -> tuple[float, float]:
    """EWMAs of mean request duration and TTFT over the requests finished since the last scrape.

    Counters that went backwards (engine restarted) or did not move keep the previous figure.
    """
    if old is None:
        return 0.0, 0.0
    latency, ttft = old.recent_latency_ms, old.recent_ttft_ms
    done = load.successes - old.successes
    if done > 0 and load.request_us >= old.request_us:
        sample = (load.request_us - old.request_us) / done / 1000.0
        latency = sample if latency == 0 else (1 - LATENCY_ALPHA) * latency + LATENCY_ALPHA * sample
    firsts = load.ttft_count - old.ttft_count
    if firsts > 0 and load.ttft_ms_sum >= old.ttft_ms_sum:
        sample = (load.ttft_ms_sum - old.ttft_ms_sum) / firsts
        ttft = sample if ttft == 0 else (1 - LATENCY_ALPHA) * ttft + LATENCY_ALPHA * sample
    return latency, ttft


def _latency_moved(a: float, b: float) -> bool:
    # Latency is news when it moves by over 10% (and over 1 ms), not on every scrape's jitter.
    return abs(a - b) > max(1.0, 0.1 * max(a, b))


class EndpointTable:
    def __init__(
        self,
        *,
        unhealthy_after: int = 2,
        start_revision: int | None = None,
        tombstone_limit: int = TOMBSTONE_LIMIT,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.unhealthy_after = max(1, unhealthy_after)
        self._revision = start_revision if start_revision is not None else time.time_ns() // 1000
        self._floor = self._revision  # deltas can be computed from any revision >= this
        self._states: dict[str, EndpointState] = {}
        self._published: dict[str, EndpointState] = {}  # as of each endpoint's last bump
        self._changed_at: dict[str, int] = {}
        self._removed: OrderedDict[str, int] = OrderedDict()
        self._tombstone_limit = tombstone_limit
        self._loading_since: dict[tuple[str, str, str], float] = {}
        self._wall = wall_clock
        self._mono = monotonic
        self._changed = asyncio.Event()
        self._cold: frozenset[str] = frozenset()  # set by the deployments (set_scaled_to_zero)
        self._cold_at = 0  # the revision of its last change

    # ---- reads -------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._revision

    def get(self, name: str) -> EndpointState | None:
        return self._states.get(name)

    def states(self) -> tuple[EndpointState, ...]:
        """All endpoints by name. Safe from other threads (copies before sorting)."""
        return tuple(sorted(list(self._states.values()), key=lambda s: s.name))

    def list(self, model: str = "") -> tuple[EndpointState, ...]:
        """All endpoints, or only the healthy ones with `model` READY."""
        states = self.states()
        return tuple(s for s in states if s.has_ready(model)) if model else states

    def scaled_to_zero(self) -> tuple[str, ...]:
        """The Triton models the deployments hold at zero (or are waking) that no healthy
        endpoint has READY yet: what a router should hold requests for and wake."""
        states = self.states()
        return tuple(sorted(m for m in self._cold if not any(s.has_ready(m) for s in states)))

    # ---- writes ------------------------------------------------------------------------------

    def upsert(self, spec: EndpointSpec) -> EndpointState:
        """Adds or updates an endpoint. A new address starts from scratch (unknown health)."""
        prev = self._states.get(spec.name)
        if prev is None or prev.spec.address != spec.address:
            state = EndpointState(spec=spec)
            self._forget_loading(spec.name)
        else:
            state = replace(prev, spec=spec)
        self._states[spec.name] = state
        self._removed.pop(spec.name, None)  # it exists again: its changed_at supersedes the tombstone
        if prev is None or materially_changed(prev, state):
            self._bump(spec.name)
        return state

    def set_scaled_to_zero(self, triton_models: frozenset[str]) -> None:
        """The deployments' models at zero or waking; watchers hear of a change at once."""
        if triton_models != self._cold:
            self._cold = triton_models
            self._revision += 1
            self._cold_at = self._revision
            self._notify()

    def remove(self, name: str) -> EndpointState:
        state = self._states.pop(name, None)
        if state is None:
            raise NotFound(f"endpoint {name!r} is not registered")
        self._published.pop(name, None)
        self._changed_at.pop(name, None)
        self._forget_loading(name)
        self._revision += 1
        self._removed[name] = self._revision
        while len(self._removed) > self._tombstone_limit:
            _, rev = self._removed.popitem(last=False)
            self._floor = max(self._floor, rev)  # older watchers can no longer learn of it
        self._notify()
        return state

    def apply_probe(self, name: str, address: str, result: ProbeResult) -> tuple[EndpointState | None, bool]:
        """Folds one probe round into the table; returns (new state, whether the revision bumped).

        A result for an endpoint that was removed or re-pointed meanwhile is dropped.
        """
        prev = self._states.get(name)
        if prev is None or prev.spec.address != address:
            return None, False
        health, failures = next_health(prev.health, prev.failures, result.ok, self.unhealthy_after)
        last_seen = prev.last_seen
        if result.ok:
            models = self._merge_models(prev, result)
            last_seen = self._wall()
        elif health == UNHEALTHY:
            # Nothing on a dead endpoint is servable, whatever it said last.
            models = tuple(
                replace(
                    m, state=UNAVAILABLE, waiting=0, active=0, kv_cache_fraction=0.0, kv_cache_known=False
                )
                for m in prev.models
            )
            self._forget_loading(name)
        else:
            models = prev.models  # below the threshold: keep the last known picture
        gpus = result.gpus if result.gpus is not None else prev.gpus
        util = sum(g.utilization for g in gpus) / len(gpus) if gpus else 0.0
        state = replace(
            prev,
            health=health,
            failures=failures,
            models=models,
            gpus=gpus,
            gpu_utilization=util,
            last_seen=last_seen,
            error=result.error,
        )
        self._states[name] = state
        if materially_changed(self._published[name], state):
            self._bump(name)
            return state, True
        return state, False

    def _merge_models(self, prev: EndpointState, result: ProbeResult) -> tuple[ModelStatus, ...]:
        before = {(m.name, m.version): m for m in prev.models}
        now = self._mono()
        out = []
        for entry in sorted(result.models, key=lambda e: (e.name, e.version)):
            key = (entry.name, entry.version)
            old = before.get(key)
            state = model_state(entry.state)
            load = result.metrics.load_for(entry.name, entry.version) if result.metrics else None
            if load is None and result.metrics is None and old is not None:
                load = _load_of(old)  # scrape failed: keep the last figures
            elif load is None:
                load = NO_FIGURES
            waiting, active, kv = load.waiting, load.active, load.kv_cache_fraction
            load_time = old.load_time_s if old is not None else 0.0
            lkey = (prev.name, *key)
            if state == LOADING:
                self._loading_since.setdefault(lkey, now)
            elif state == READY and lkey in self._loading_since:
                load_time = now - self._loading_since.pop(lkey)
            else:
                self._loading_since.pop(lkey, None)
            latency, ttft = _recent_latency(old, load)
            out.append(
                ModelStatus(
                    entry.name,
                    entry.version,
                    state,
                    waiting,
                    active,
                    kv,
                    load_time,
                    latency,
                    ttft,
                    load.requests,
                    load.successes,
                    load.request_us,
                    load.ttft_ms_sum,
                    load.ttft_count,
                    max_running=load.max_running,
                    kv_cache_known=load.kv_cache_known,
                    prefix_hit_rate=_prefix_hit_rate(old, load),
                    prefix_queries=load.prefix_queries,
                    prefix_hits=load.prefix_hits,
                )
            )
        return tuple(out)

    def _forget_loading(self, name: str) -> None:
        for key in [k for k in self._loading_since if k[0] == name]:
            del self._loading_since[key]

    def _bump(self, name: str) -> None:
        self._revision += 1
        self._changed_at[name] = self._revision
        self._published[name] = self._states[name]
        self._notify()

    def _notify(self) -> None:
        # Wake every current watcher once; later waiters get a fresh event.
        self._changed.set()
        self._changed = asyncio.Event()

    # ---- watch -------------------------------------------------------------------------------

    def changes_since(self, since: int) -> WatchBatch:
        """What a client holding `since` is missing: a delta, or a snapshot when it cannot be replayed."""
        cold = self.scaled_to_zero()
        if since <= 0 or since < self._floor or since > self._revision:
            return WatchBatch(True, self.states(), (), self._revision, cold)
        changed = tuple(s for s in self.states() if self._changed_at.get(s.name, 0) > since)
        removed = tuple(n for n, rev in self._removed.items() if rev > since)
        return WatchBatch(False, changed, removed, self._revision, cold)

    def _news(self, batch: WatchBatch, since: int) -> bool:
        return batch.snapshot or bool(batch.endpoints or batch.removed) or self._cold_at > since

    async def watch(self, since: int) -> AsyncIterator[WatchBatch]:
        """Snapshot (or catch-up delta), then live deltas. Changes that pile up while the client is
        slow are merged into one batch, so a slow watcher costs no memory here."""
        first = self.changes_since(since)
        if self._news(first, since):
            yield first
        held = first.revision
        while True:
            if self._revision == held:
                await self._changed.wait()
            batch = self.changes_since(held)
            if self._news(batch, held):
                yield batch
            held = batch.revision
