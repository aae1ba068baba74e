"""The simulator's one frozen configuration object, built once in ``main()`` or by a test."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .faults import FaultSettings

PROTOCOLS = ("triton", "openai", "both")


@dataclass(frozen=True)
class SimulatorConfig:
    host: str = "127.0.0.1"
    port: int = 8001  # gRPC; 0 picks a free port (see RunningServer.port)
    metrics_port: int = 8002  # HTTP /metrics; 0 picks a free port, -1 disables it
    catalog_path: Path | None = None  # None: the packaged services/enginesim/models.yaml
    gpu_memory_gb: float = 80.0  # simulated GPU memory that loads must fit in
    time_scale: float = 1.0  # >1 runs simulated time faster (load times and steps shrink)
    load: tuple[str, ...] = ()  # models to load at startup besides the catalog's preload ones
    preload: bool = True  # False: ignore the catalog's preload flags (load only `load`)
    shutdown_grace_s: float = 5.0  # on SIGTERM/SIGINT: time for in-flight requests to finish
    startup_delay_s: float = 0.0  # simulated seconds live-but-not-ready before loading models
    faults: FaultSettings = field(default_factory=FaultSettings)  # failure injection (faults.py)
    fault_seed: int | None = None  # makes the sequence of injected faults reproducible
    server_version: str = "2.59.0"  # reported by ServerMetadata, as a Triton release
    protocol: str = "triton"  # "triton" (gRPC), "openai" (HTTP, vLLM-flavoured) or "both"
    openai_port: int = 8000  # the OpenAI API and its vLLM /metrics; 0 picks a free port
    # KV-cache events in vLLM's format (kv_events.py): ZeroMQ PUB port, -1 off, 0 a free port;
    # the replay ROUTER port likewise; the pod name in the topic kv@<pod>@<model>; the event
    # encoding ("map": vLLM after PR #42892, "array": before); the block hash chain's seed.
    kv_events_port: int = -1
    kv_events_replay_port: int = -1
    kv_events_pod: str = "enginesim"
    kv_events_format: str = "map"
    kv_hash_seed: str = "0"

    @property
    def serves_triton(self) -> bool:
        return self.protocol in ("triton", "both")

    @property
    def serves_openai(self) -> bool:
        return self.protocol in ("openai", "both")

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if not 0 <= self.openai_port <= 65535:
            raise ValueError(f"openai_port must be in 0..65535, got {self.openai_port}")
        for name in ("kv_events_port", "kv_events_replay_port"):
            if not -1 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be in -1..65535, got {getattr(self, name)}")
        if self.kv_events_format not in ("map", "array"):
            raise ValueError(f"kv_events_format must be map or array, got {self.kv_events_format!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in -1..65535, got {self.metrics_port}")
        if self.gpu_memory_gb <= 0:
            raise ValueError(f"gpu_memory_gb must be > 0, got {self.gpu_memory_gb}")
        if self.time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {self.time_scale}")
        if self.startup_delay_s < 0:
            raise ValueError(f"startup_delay_s must be >= 0, got {self.startup_delay_s}")
        if self.shutdown_grace_s < 0:
            raise ValueError(f"shutdown_grace_s must be >= 0, got {self.shutdown_grace_s}")
