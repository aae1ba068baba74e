"""GPU inventory: NVML where the pool's host has a driver, Triton's nv_gpu_* metrics elsewhere.

NVML sees only the GPUs of the machine the pool runs on, so its figures are attributed to one
endpoint, `nvml_endpoint` (the Triton on this host); every other endpoint's GPUs come from its
own metrics. With no `nvml_endpoint`, NVML GPUs are listed under endpoint "" (the pool host).
A host without NVML (no library, no driver, no GPU) is the normal case on CPU machines: the
reader then reports `available = False` and the reason, and nothing else changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import replace

from services.pool.state import EndpointState, GpuSample

log = logging.getLogger("harness.pool.gpus")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Nvml:
    """A thin pynvml reader. Reads block (driver calls), so `refresh` runs them in a thread."""

    def __init__(self, enabled: bool = True) -> None:
        self.available = False
        self.reason = "disabled by configuration"
        self._samples: tuple[GpuSample, ...] = ()
        self._nvml = None
        if not enabled:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError...
            self.reason = f"NVML unavailable: {exc}"
            log.info("%s; GPU figures come from Triton metrics", self.reason)
            return
        self._nvml = pynvml
        self.available = True
        self.reason = ""

    @property
    def samples(self) -> tuple[GpuSample, ...]:
        return self._samples

    def read(self) -> tuple[GpuSample, ...]:
        nv = self._nvml
        if nv is None:
            return ()
        out = []
        for i in range(nv.nvmlDeviceGetCount()):
            handle = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(handle)
            try:
                util = nv.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
            except nv.NVMLError:  # not supported on some devices (MIG instances, vGPUs)
                util = 0.0
            try:
                uuid = _text(nv.nvmlDeviceGetUUID(handle))
            except nv.NVMLError:
                uuid = ""
            out.append(
                GpuSample(
                    index=i,
                    uuid=uuid,
                    name=_text(nv.nvmlDeviceGetName(handle)),
                    memory_total_bytes=int(mem.total),
                    memory_used_bytes=int(mem.used),
                    utilization=util,
                    source="nvml",
                )
            )
        return tuple(out)

    async def refresh(self) -> None:
        """Re-reads every GPU; a failed read keeps the previous figures (and is logged)."""
        if not self.available:
            return
        try:
            self._samples = await asyncio.to_thread(self.read)
        except Exception:
            log.warning("NVML read failed; keeping the previous GPU figures", exc_info=True)

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                log.debug("nvmlShutdown failed", exc_info=True)
            self._nvml = None
            self.available = False


def list_gpus(
    states: Iterable[EndpointState],
    nvml: tuple[GpuSample, ...],
    nvml_endpoint: str,
    endpoint: str = "",
) -> list[tuple[str, GpuSample]]:
    """(endpoint name, GPU) rows, optionally for one endpoint only.

    The prober already replaced `nvml_endpoint`'s metric figures by NVML's; NVML GPUs whose
    endpoint is not registered (or not named) are listed on their own.
    """
    rows: list[tuple[str, GpuSample]] = []
    names = set()
    for state in states:
        names.add(state.name)
        gpu_type = state.spec.gpu_type
        rows.extend((state.name, g if g.name else replace(g, name=gpu_type)) for g in state.gpus)
    if nvml and nvml_endpoint not in names:
        rows.extend((nvml_endpoint, g) for g in nvml)
    if endpoint:
        rows = [r for r in rows if r[0] == endpoint]
    return rows
