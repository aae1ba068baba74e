"""Value types of the pool's core: endpoint specs, probe observations and endpoint state.

All of them are frozen so the endpoint table can hand the same objects to RPC handlers, watch
streams and the metrics scrape thread without copying or locking. Enum values are the
contract's own (`pool_pb2`), so the servicer needs no mapping layer for them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

from harness.pool.v1 import pool_pb2

from services.common.errors import InvalidArgument
from services.common.limits import check_count, check_length, check_range

HEALTH_UNKNOWN = pool_pb2.ENDPOINT_HEALTH_UNSPECIFIED
HEALTHY = pool_pb2.ENDPOINT_HEALTH_HEALTHY
UNHEALTHY = pool_pb2.ENDPOINT_HEALTH_UNHEALTHY

MODEL_UNKNOWN = pool_pb2.MODEL_STATE_UNSPECIFIED
LOADING = pool_pb2.MODEL_STATE_LOADING
READY = pool_pb2.MODEL_STATE_READY
UNLOADING = pool_pb2.MODEL_STATE_UNLOADING
UNAVAILABLE = pool_pb2.MODEL_STATE_UNAVAILABLE

# Triton's RepositoryIndex state strings.
_TRITON_STATES = {"READY": READY, "LOADING": LOADING, "UNLOADING": UNLOADING, "UNAVAILABLE": UNAVAILABLE}

GIB = 1 << 30  # memory_gb in configs means GiB, as the engine simulator counts it

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")


def model_state(triton_state: str) -> int:
    return _TRITON_STATES.get(triton_state.upper(), MODEL_UNKNOWN)


@dataclass(frozen=True)
class EndpointSpec:
    """What an operator says about an engine endpoint (RegisterEndpoint or config)."""

    name: str
    address: str  # host:port of GRPCInferenceService; for kind "openai" the API's base URL
    metrics_url: str = ""  # "" = no scrape (load figures stay 0)
    labels: tuple[tuple[str, str], ...] = ()
    gpu_type: str = ""
    gpu_count: int = 0
    gpu_memory_bytes: int = 0
    kind: str = "triton"  # "triton" (gRPC) or "openai" (HTTP)
    flavour: str = ""  # for kind "openai": vllm (default), sglang, tgi, ollama, triton-openai

    @property
    def fixed(self) -> bool:
        """A fixed deployment: the pool routes to it and reports it, never loads or unloads
        models there (OpenAI-protocol servers have no model control)."""
        return self.kind == "openai"

    @staticmethod
    def make(name: str, address: str, *, labels: Mapping[str, str] | None = None, **kw) -> EndpointSpec:
        return EndpointSpec(name, address, labels=tuple(sorted((labels or {}).items())), **kw)


# Contract limits (pool.proto says the same).
MAX_URL_CHARS = 2048
MAX_GPU_TYPE_CHARS = 64
MAX_GPU_COUNT = 1024
MAX_GPU_MEMORY_BYTES = 2**50  # 1 PiB across one endpoint's GPUs
MAX_LABELS = 32


def _check_address(address: str) -> None:
    check_length("endpoint address", address, 300)
    host, sep, port = address.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise InvalidArgument(f"endpoint address must be host:port, got {address!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise InvalidArgument(f"bad IPv6 address in {address!r}")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError as exc:
            raise InvalidArgument(f"bad IPv6 address in {address!r}") from exc
    elif not re.fullmatch(r"[A-Za-z0-9._-]{1,253}", host):
        raise InvalidArgument(f"bad host in endpoint address {address!r}")


KINDS = ("triton", "openai")
OPENAI_FLAVOURS = ("vllm", "sglang", "tgi", "ollama", "triton-openai")


def _check_base_url(address: str) -> None:
    check_length("endpoint address", address, 300)
    try:
        url = urlparse(address)
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
        raise InvalidArgument(
            f"an openai endpoint's address is the API's base URL, e.g. http://10.0.0.5:8000, got {address!r}"
        )


def validate_spec(spec: EndpointSpec) -> EndpointSpec:
    """Raises InvalidArgument naming the first bad field; returns the spec unchanged."""
    if not _NAME.match(spec.name):
        raise InvalidArgument(
            f"endpoint name must be 1-63 of [A-Za-z0-9._-] starting with a letter or digit, got {spec.name!r}"
        )
    if spec.kind not in KINDS:
        raise InvalidArgument(f"endpoint kind must be one of {', '.join(KINDS)}, got {spec.kind!r}")
    if spec.kind == "openai":
        if spec.flavour and spec.flavour not in OPENAI_FLAVOURS:
            raise InvalidArgument(
                f"flavour must be one of {', '.join(OPENAI_FLAVOURS)}, got {spec.flavour!r}"
            )
        _check_base_url(spec.address)
    else:
        if spec.flavour:
            raise InvalidArgument(
                f"flavour is for openai endpoints; a triton endpoint has none, got {spec.flavour!r}"
            )
        _check_address(spec.address)
    if spec.metrics_url:
        check_length("metrics_url", spec.metrics_url, MAX_URL_CHARS)
        try:
            url = urlparse(spec.metrics_url)
        except ValueError:  # e.g. an unclosed IPv6 bracket
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.netloc:
            raise InvalidArgument(f"metrics_url must be an http(s) URL, got {spec.metrics_url!r}")
    check_length("gpu_type", spec.gpu_type, MAX_GPU_TYPE_CHARS)
    check_range("gpu_count", spec.gpu_count, 0, MAX_GPU_COUNT)
    check_range("gpu_memory_bytes", spec.gpu_memory_bytes, 0, MAX_GPU_MEMORY_BYTES)
    check_count("labels", spec.labels, MAX_LABELS)
    for key, value in spec.labels:
        if not _LABEL_KEY.match(key) or len(value) > 256:
            raise InvalidArgument(f"bad label {key!r}: keys are 1-63 of [A-Za-z0-9._/-], values <= 256 chars")
    return spec


@dataclass(frozen=True)
class ModelLoad:
    """Load figures of one model, from the engine's metrics."""

    waiting: int = 0
    active: int = 0
    kv_cache_fraction: float = 0.0
    # Cumulative counters (Triton's are monotonic per process): requests finished (success +
    # failure) for idle detection; successes and their summed duration for recent latency.
    requests: int = 0
    successes: int = 0
    request_us: int = 0
    # Cumulative first-response histogram sum/count (Triton with histograms on); 0 = absent.
    ttft_ms_sum: float = 0.0
    ttft_count: int = 0
    max_running: int = 0  # the engine's running-sequence limit (request_type="max"); 0 = unknown
    kv_cache_known: bool = True  # False: the engine exports no KV figure (0 above means nothing)
    # Prefix cache: cumulative prompt tokens looked up and found (vLLM's counters), or the
    # engine's own recent hit rate (SGLang's gauge); None = the engine exports neither.
    prefix_queries: float | None = None
    prefix_hits: float | None = None
    prefix_hit_rate: float | None = None


NO_FIGURES = ModelLoad(kv_cache_known=False)  # a model the metrics say nothing about


@dataclass(frozen=True)
class GpuSample:
    """One GPU as last observed (from NVML or from Triton's nv_gpu_* metrics)."""

    index: int
    uuid: str = ""
    name: str = ""
    memory_total_bytes: int = 0
    memory_used_bytes: int = 0
    utilization: float = 0.0
    source: str = "triton_metrics"  # or "nvml"


@dataclass(frozen=True)
class MetricsSample:
    """What one metrics scrape said: per-model load and per-GPU figures."""

    loads: Mapping[tuple[str, str], ModelLoad] = field(default_factory=dict)  # (model, version)
    gpus: tuple[GpuSample, ...] = ()

    def load_for(self, name: str, version: str) -> ModelLoad | None:
        """Exact (model, version) first; else any version of the model (RepositoryIndex may
        report version "" while metrics carry "1")."""
        hit = self.loads.get((name, version))
        if hit is not None:
            return hit
        for (model, _v), load in self.loads.items():
            if model == name:
                return load
        return None


@dataclass(frozen=True)
class IndexEntry:
    """One row of Triton's RepositoryIndex."""

    name: str
    version: str = ""
    state: str = ""


@dataclass(frozen=True)
class ProbeResult:
    """One probe round. `ok` is the gRPC verdict only: metrics never decide health."""

    ok: bool
    models: tuple[IndexEntry, ...] = ()
    metrics: MetricsSample | None = None  # None = no metrics this round (keep last figures)
    gpus: tuple[GpuSample, ...] | None = None  # None = unknown this round (keep last)
    error: str = ""


@dataclass(frozen=True)
class ModelStatus:
    """A model on an endpoint, as the pool reports it."""

    name: str
    version: str = ""
    state: int = MODEL_UNKNOWN
    waiting: int = 0
    active: int = 0
    kv_cache_fraction: float = 0.0
    load_time_s: float = 0.0  # measured LOADING -> READY as seen by the probes; 0 = unknown
    recent_latency_ms: float = 0.0  # EWMA of mean request duration between scrapes; 0 = none yet
    recent_ttft_ms: float = 0.0  # EWMA of time to first response (when Triton exports it)
    # The raw cumulative counters of the last scrape (not published; deltas feed the EWMAs and
    # the idle detector, which only needs to see them move).
    requests: int = 0
    successes: int = 0
    request_us: int = 0
    ttft_ms_sum: float = 0.0
    ttft_count: int = 0
    max_running: int = 0  # the engine's running-sequence limit; 0 = unknown
    kv_cache_known: bool = True  # False: kv_cache_fraction is 0 because nothing measured it
    prefix_hit_rate: float | None = None  # recent prefix-cache hit rate, [0, 1]; None = unknown
    prefix_queries: float | None = None  # the raw cumulative prefix counters of the last scrape
    prefix_hits: float | None = None


@dataclass(frozen=True)
class EndpointState:
    """Everything the pool knows about one endpoint."""

    spec: EndpointSpec
    health: int = HEALTH_UNKNOWN
    models: tuple[ModelStatus, ...] = ()
    gpus: tuple[GpuSample, ...] = ()
    gpu_utilization: float = 0.0
    last_seen: float | None = None  # wall-clock seconds of the last successful probe
    failures: int = 0  # consecutive failed gRPC probes
    error: str = ""

    @property
    def name(self) -> str:
        return self.spec.name

    def has_ready(self, model: str) -> bool:
        return self.health == HEALTHY and any(m.name == model and m.state == READY for m in self.models)

    @property
    def memory_total_bytes(self) -> int:
        """The registered figure; else what the GPUs report (an operator may leave it 0)."""
        return self.spec.gpu_memory_bytes or sum(g.memory_total_bytes for g in self.gpus)


def next_health(health: int, failures: int, ok: bool, unhealthy_after: int) -> tuple[int, int]:
    """The health state machine: (health, consecutive failures) after one probe.

    One success makes an endpoint HEALTHY. It turns UNHEALTHY only after `unhealthy_after`
    failures in a row, so one dropped probe does not pull a busy endpoint out of routing.
    """
    if ok:
        return HEALTHY, 0
    failures += 1
    return (UNHEALTHY if failures >= unhealthy_after else health), failures
