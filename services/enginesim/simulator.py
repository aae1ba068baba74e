"""The simulated Triton server state: model repository, GPU memory, load/unload (no gRPC).

Triton runs with ``--model-control-mode=explicit``: models change state only through
:meth:`Simulator.load` / :meth:`Simulator.unload` (the repository RPCs) and the startup list.
Memory is reserved when a load starts (a real load allocates weights and the KV pool up
front), so two concurrent loads cannot both squeeze into the same free memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from .catalog import Catalog, ModelSpec
from .engine import GpuClock, ModelEngine

log = logging.getLogger("enginesim")

GIB = 1024**3  # "80 GB" GPUs report ~80 GiB; the simulator counts GiB everywhere


class ModelState(StrEnum):  # Triton's ModelIndex.state strings
    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


class ModelNotFoundError(LookupError):
    def __init__(self, name: str, version: str = "", *, unloaded: bool = False) -> None:
        # Triton's exact wording; routers and tests match on it. A model that was loaded and
        # is UNLOADING or UNAVAILABLE now "has no available versions".
        where = f"'{name}' version {version}" if version else f"'{name}'"
        what = "has no available versions" if unloaded else "is not found"
        super().__init__(f"Request for unknown model: {where} {what}")


class ModelNotReadyError(RuntimeError):
    def __init__(self, name: str, version: str) -> None:
        super().__init__(f"Request for unknown model: '{name}' version {version} is not at ready state")


class UnknownRepositoryModelError(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"failed to load '{name}', failed to poll from model repository")


class InsufficientMemoryError(RuntimeError):
    """Loading would exceed the simulated GPU memory."""


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str


@dataclass
class _Slot:
    spec: ModelSpec
    state: ModelState
    reason: str = ""
    engine: ModelEngine | None = None
    transition: asyncio.Task[None] | None = None  # the load/unload in progress


class Simulator:
    """Everything a Triton server holds, minus the protocol."""

    def __init__(
        self,
        catalog: Catalog,
        gpu_memory_gb: float = 80.0,
        time_scale: float = 1.0,
        kv_events: Callable[[str, list], None] | None = None,
        kv_hash_seed: str = "0",
    ) -> None:
        if gpu_memory_gb <= 0:
            raise ValueError(f"gpu_memory_gb must be > 0, got {gpu_memory_gb}")
        if time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        self.catalog = catalog
        self.gpu_memory_gb = gpu_memory_gb
        self.time_scale = time_scale
        self.gpu = GpuClock()  # one simulated GPU: the loaded models share its compute
        self.ready = False  # ServerReady: startup loads done and not shutting down
        self._slots: dict[str, _Slot] = {}  # models ever touched by a load
        # (model, KV events) -> published (kv_events.py); None: the engines record no events.
        self._kv_events = kv_events
        self.kv_hash_seed = kv_hash_seed  # the PYTHONHASHSEED of vLLM's block hash chain

    # --- state ------------------------------------------------------------------------------
    @property
    def gpu_memory_total_bytes(self) -> int:
        return int(self.gpu_memory_gb * GIB)

    @property
    def gpu_memory_used_gb(self) -> float:
        return sum(s.spec.memory_gb for s in list(self._slots.values()) if s.state != ModelState.UNAVAILABLE)

    def engines(self) -> dict[str, ModelEngine]:
        """Engines of the models that are READY (or draining while UNLOADING)."""
        return {n: s.engine for n, s in list(self._slots.items()) if s.engine is not None}

    def state_of(self, name: str) -> ModelState | None:
        slot = self._slots.get(name)
        return slot.state if slot else None

    def is_ready(self, name: str, version: str = "") -> bool:
        slot = self._slots.get(name)
        return slot is not None and slot.state == ModelState.READY and version in ("", slot.spec.version)

    def spec(self, name: str, version: str = "") -> ModelSpec:
        """Spec of a READY model, else the error Triton would give (NOT_FOUND / not ready)."""
        slot = self._slots.get(name)
        if slot is None:
            raise ModelNotFoundError(name)
        if version not in ("", slot.spec.version):
            raise ModelNotFoundError(name, version)
        if slot.state in (ModelState.UNAVAILABLE, ModelState.UNLOADING):
            raise ModelNotFoundError(name, unloaded=True)
        if slot.state != ModelState.READY or slot.engine is None:
            raise ModelNotReadyError(name, slot.spec.version)
        return slot.spec

    def engine(self, name: str, version: str = "") -> ModelEngine:
        self.spec(name, version)
        engine = self._slots[name].engine
        assert engine is not None  # spec() checked READY
        return engine

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """RepositoryIndex: every catalog model; never-loaded ones have no version/state."""
        out: list[IndexEntry] = []
        for spec in self.catalog.models:
            slot = self._slots.get(spec.name)
            if slot is None:
                if not ready_only:
                    out.append(IndexEntry(spec.name, "", "", ""))
                continue
            if ready_only and slot.state != ModelState.READY:
                continue
            out.append(IndexEntry(spec.name, spec.version, slot.state.value, slot.reason))
        return out

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self, extra_models: tuple[str, ...] = (), preload: bool = True) -> None:
        """Load the catalog's preload models (unless ``preload`` is off) plus ``extra_models``,
        then become ready."""
        names = [s.name for s in self.catalog.models if s.preload and preload]
        names += [n for n in extra_models if n not in names]
        await asyncio.gather(*(self.load(n) for n in names))
        self.ready = True

    async def stop(self, grace_s: float = 0.0) -> None:
        """Not ready any more; let running requests finish for up to ``grace_s``, then stop."""
        self.ready = False
        engines = list(self.engines().values())
        if engines and grace_s > 0:
            try:
                await asyncio.wait_for(asyncio.gather(*(e.drain() for e in engines)), grace_s)
            except TimeoutError:
                log.warning("grace period of %.1fs over; failing unfinished requests", grace_s)
        await asyncio.gather(*(e.stop() for e in engines))
        for slot in self._slots.values():
            if slot.transition is not None:
                slot.transition.cancel()
            slot.engine = None
            slot.state, slot.reason = ModelState.UNAVAILABLE, "server stopped"

    async def load(self, name: str) -> None:
        """RepositoryModelLoad. Loading a READY model is a no-op (no config change to apply)."""
        spec = self.catalog.get(name)
        if spec is None:
            raise UnknownRepositoryModelError(name)
        slot = self._slots.get(name)
        while slot is not None and slot.transition is not None:
            await asyncio.shield(slot.transition)  # join the load/unload in progress
        if slot is not None and slot.state == ModelState.READY:
            return
        free = self.gpu_memory_gb - self.gpu_memory_used_gb
        if spec.memory_gb > free:
            reason = (
                f"not enough GPU memory to load '{name}': needs {spec.memory_gb:g} GB, "
                f"{free:g} GB free of {self.gpu_memory_gb:g} GB"
            )
            self._slots[name] = _Slot(spec, ModelState.UNAVAILABLE, reason)
            # Triton's shape of a failed load (INTERNAL): "load failed for model 'X': version 1
            # is at UNAVAILABLE state: Internal: <cause>".
            raise InsufficientMemoryError(
                f"load failed for model '{name}': version {spec.version} is at UNAVAILABLE state: "
                f"Internal: {reason}"
            )
        slot = self._slots[name] = _Slot(spec, ModelState.LOADING)
        slot.transition = asyncio.create_task(self._do_load(slot))
        await asyncio.shield(slot.transition)

    async def _do_load(self, slot: _Slot) -> None:
        try:
            await asyncio.sleep(slot.spec.load_time_s / self.time_scale)
            name, publish = slot.spec.name, self._kv_events
            engine = ModelEngine(
                slot.spec,
                self.time_scale,
                self.gpu,
                kv_events=(lambda events: publish(name, events)) if publish is not None else None,
                hash_seed=self.kv_hash_seed,
            )
            engine.start()
            slot.engine, slot.state, slot.reason = engine, ModelState.READY, ""
            log.info("loaded model %s", slot.spec.name)
        except asyncio.CancelledError:
            slot.state, slot.reason = ModelState.UNAVAILABLE, "load cancelled"
            raise
        finally:
            slot.transition = None

    async def unload(self, name: str, *, wait: bool = True) -> None:
        """RepositoryModelUnload: refuse new requests, let in-flight ones finish, free memory.

        Triton answers the RPC while the model is still UNLOADING (``wait=False``); its memory
        is free only once the model is UNAVAILABLE. Unknown or unloaded models: OK, as Triton.
        """
        slot = self._slots.get(name)
        while slot is not None and slot.transition is not None:
            await asyncio.shield(slot.transition)
        if slot is None or slot.state != ModelState.READY:
            return
        slot.state = ModelState.UNLOADING
        slot.transition = asyncio.create_task(self._do_unload(slot))
        if wait:
            await asyncio.shield(slot.transition)

    async def _do_unload(self, slot: _Slot) -> None:
        try:
            if slot.engine is not None:
                await slot.engine.drain()
                await slot.engine.stop()
            slot.engine = None
            slot.state, slot.reason = ModelState.UNAVAILABLE, "unloaded"
            log.info("unloaded model %s", slot.spec.name)
        finally:
            slot.transition = None
