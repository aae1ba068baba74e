"""Model catalog of the engine simulator: which models exist and how they behave.

The catalog is a YAML file (``models.yaml`` next to this module by default). Parsing happens
only when :func:`load_catalog` is called, never at import time, and every mistake is reported
with the file and the model it belongs to, so a typo in a deployment catalog is easy to find.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CATALOG_PATH = Path(__file__).with_name("models.yaml")
LAYOUTS = ("ensemble", "bls")
KINDS = ("generation", "embedding")  # embedding: the tensors of services/common/embedding_tensors.py


class CatalogError(ValueError):
    """The catalog file is missing, malformed or holds an invalid model entry."""


@dataclass(frozen=True)
class LatencyProfile:
    """Cost model of one engine iteration (see ``engine.ModelEngine.step_time_ms``)."""

    prefill_ms_per_token: float
    decode_ms_per_token: float  # a.k.a. time per output token at batch size 1, minus overhead
    step_overhead_ms: float


@dataclass(frozen=True)
class ModelSpec:
    """One servable model as Triton would see it after loading its repository entry."""

    name: str
    decoupled: bool
    layout: str  # "ensemble" or "bls": changes only the config Triton reports, not the tensors
    memory_gb: float
    load_time_s: float
    latency: LatencyProfile
    max_running_sequences: int
    max_queue_size: int
    kv_block_size: int
    kv_capacity_blocks: int
    max_batch_size: int = 64
    preload: bool = False
    kv_cache_reuse: bool = True  # prefix reuse (TRT-LLM's enable_kv_cache_reuse)
    gpu: str = ""  # the GPU the latency profile describes (documentation only)
    version: str = "1"  # the simulator serves a single version per model, like most TRT-LLM repos
    kind: str = "generation"
    dimensions: int = 0  # an embedding model's vector length

    @property
    def embedding(self) -> bool:
        return self.kind == "embedding"

    def kv_blocks_for(self, tokens: int) -> int:
        """KV blocks needed to hold ``tokens`` tokens of one sequence."""
        return math.ceil(tokens / self.kv_block_size) if tokens > 0 else 0


@dataclass(frozen=True)
class Catalog:
    models: tuple[ModelSpec, ...]
    source: str = "<memory>"

    def get(self, name: str) -> ModelSpec | None:
        for spec in self.models:
            if spec.name == name:
                return spec
        return None

    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.models)


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read and validate a catalog file; ``None`` means the packaged default."""
    file = Path(path) if path is not None else DEFAULT_CATALOG_PATH
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"cannot read model catalog {file}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"model catalog {file} is not valid YAML: {exc}") from exc
    return parse_catalog(data, source=str(file))


def parse_catalog(data: Any, source: str = "<memory>") -> Catalog:
    """Validate already-parsed catalog data (a mapping with a ``models`` list)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("models"), list):
        raise CatalogError(f"{source}: expected a mapping with a 'models' list")
    specs: list[ModelSpec] = []
    seen: set[str] = set()
    for index, entry in enumerate(data["models"]):
        spec = _parse_model(entry, f"{source}: models[{index}]")
        if spec.name in seen:
            raise CatalogError(f"{source}: model {spec.name!r} is listed twice")
        seen.add(spec.name)
        specs.append(spec)
    if not specs:
        raise CatalogError(f"{source}: the catalog lists no models")
    return Catalog(models=tuple(specs), source=source)


_MODEL_KEYS = {
    "name",
    "gpu",
    "decoupled",
    "layout",
    "memory_gb",
    "load_time_s",
    "latency",
    "max_running_sequences",
    "max_queue_size",
    "kv_block_size",
    "kv_capacity_blocks",
    "max_batch_size",
    "preload",
    "kv_cache_reuse",
    "kind",
    "dimensions",
}
_LATENCY_KEYS = {"prefill_ms_per_token", "decode_ms_per_token", "step_overhead_ms"}


def _parse_model(entry: Any, where: str) -> ModelSpec:
    if not isinstance(entry, Mapping):
        raise CatalogError(f"{where}: expected a mapping, got {type(entry).__name__}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CatalogError(f"{where}: 'name' must be a non-empty string")
    where = f"{where} ({name})"
    unknown = set(entry) - _MODEL_KEYS
    if unknown:
        raise CatalogError(f"{where}: unknown field(s) {sorted(unknown)}")
    layout = entry.get("layout", "ensemble")
    if layout not in LAYOUTS:
        raise CatalogError(f"{where}: 'layout' must be one of {list(LAYOUTS)}, got {layout!r}")
    latency = entry.get("latency")
    if not isinstance(latency, Mapping):
        raise CatalogError(f"{where}: 'latency' must be a mapping with {sorted(_LATENCY_KEYS)}")
    unknown = set(latency) - _LATENCY_KEYS
    if unknown:
        raise CatalogError(f"{where}: unknown latency field(s) {sorted(unknown)}")
    kind = entry.get("kind", "generation")
    if kind not in KINDS:
        raise CatalogError(f"{where}: 'kind' must be one of {list(KINDS)}, got {kind!r}")
    dimensions = _int(entry, "dimensions", where, minimum=1 if kind == "embedding" else 0, default=0)
    if kind == "embedding" and entry.get("decoupled"):
        raise CatalogError(f"{where}: an embedding model answers ModelInfer once: 'decoupled' must be false")
    profile = LatencyProfile(
        prefill_ms_per_token=_number(latency, "prefill_ms_per_token", where),
        decode_ms_per_token=_number(latency, "decode_ms_per_token", where),
        step_overhead_ms=_number(latency, "step_overhead_ms", where),
    )
    return ModelSpec(
        name=name,
        decoupled=_bool(entry, "decoupled", where),
        layout=layout,
        memory_gb=_number(entry, "memory_gb", where),
        load_time_s=_number(entry, "load_time_s", where),
        latency=profile,
        max_running_sequences=_int(entry, "max_running_sequences", where, minimum=1),
        max_queue_size=_int(entry, "max_queue_size", where, minimum=0),
        kv_block_size=_int(entry, "kv_block_size", where, minimum=1),
        kv_capacity_blocks=_int(entry, "kv_capacity_blocks", where, minimum=1),
        max_batch_size=_int(entry, "max_batch_size", where, minimum=1, default=64),
        preload=_bool(entry, "preload", where, default=False),
        gpu=_string(entry, "gpu", where),
        kv_cache_reuse=_bool(entry, "kv_cache_reuse", where, default=True),
        kind=kind,
        dimensions=dimensions,
    )


_MISSING = object()


def _get(entry: Mapping[str, Any], key: str, where: str, default: Any) -> Any:
    value = entry.get(key, default)
    if value is _MISSING:
        raise CatalogError(f"{where}: missing required field {key!r}")
    return value


def _number(entry: Mapping[str, Any], key: str, where: str) -> float:
    value = _get(entry, key, where, _MISSING)
    # bool is an int subclass; "true" as a latency is always a typo.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CatalogError(f"{where}: {key!r} must be a number, got {value!r}")
    if value < 0:
        raise CatalogError(f"{where}: {key!r} must be >= 0, got {value!r}")
    return float(value)


def _int(entry: Mapping[str, Any], key: str, where: str, minimum: int, default: Any = _MISSING) -> int:
    value = _get(entry, key, where, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CatalogError(f"{where}: {key!r} must be an integer, got {value!r}")
    if value < minimum:
        raise CatalogError(f"{where}: {key!r} must be >= {minimum}, got {value}")
    return value


def _string(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key, "")
    if not isinstance(value, str):
        raise CatalogError(f"{where}: {key!r} must be a string, got {value!r}")
    return value


def _bool(entry: Mapping[str, Any], key: str, where: str, default: Any = _MISSING) -> bool:
    value = _get(entry, key, where, default)
    if not isinstance(value, bool):
        raise CatalogError(f"{where}: {key!r} must be true or false, got {value!r}")
    return value
