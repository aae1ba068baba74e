"""The models the pool can deploy, and what one loaded copy of each costs in GPU memory.

Where the footprint comes from: the pool's own configuration (`models:` in the YAML file, or
repeated `--model name=llama-3-8b,triton_model=llama-3-8b-instruct,memory_gb=33` flags), the
same figures the registry's catalog carries as `memory_gib` (compose/demo.yaml). A static
table is the robust choice for now: Deploy never waits on the registry, and the pool works
with the registry down. `ModelCatalog.replace` is the hook for a later registry sync
(ListModels or Watch) that swaps the whole table in one assignment.

A model can be named by its catalog name or by its Triton name (agents' model lists and the
router use the catalog name; Triton's RepositoryIndex the Triton one).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.common.errors import InvalidArgument, NotFound
from services.pool.state import GIB

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MODEL_KEYS = {"name", "triton_model", "memory_gb", "memory_gib"}


@dataclass(frozen=True)
class ModelSpec:
    name: str  # catalog name
    triton_model: str  # what RepositoryModelLoad loads
    memory_bytes: int  # one loaded copy: weights + KV pool + runtime


def validate_model(spec: ModelSpec) -> ModelSpec:
    for field_name, value in (("name", spec.name), ("triton_model", spec.triton_model)):
        if not _NAME.match(value):
            raise InvalidArgument(f"model {field_name} must be 1-128 of [A-Za-z0-9._-], got {value!r}")
    if spec.memory_bytes <= 0:
        raise InvalidArgument(f"model {spec.name!r}: memory must be > 0")
    return spec


def model_from_mapping(raw: Mapping[str, object]) -> ModelSpec:
    """One model from YAML or a parsed --model flag; ValueError when bad."""
    unknown = set(raw) - _MODEL_KEYS
    if unknown:
        raise ValueError(f"unknown model keys {sorted(unknown)} (known: {sorted(_MODEL_KEYS)})")
    name = str(raw.get("name", ""))
    memory = raw.get("memory_gb", raw.get("memory_gib", 0))
    try:
        spec = ModelSpec(
            name=name,
            triton_model=str(raw.get("triton_model") or name),
            memory_bytes=int(float(memory or 0) * GIB),  # type: ignore[arg-type]
        )
        return validate_model(spec)
    except InvalidArgument as exc:
        raise ValueError(exc.message) from exc


def parse_model_flag(text: str) -> ModelSpec:
    """`name=llama-3-8b,triton_model=llama-3-8b-instruct,memory_gb=33`."""
    raw: dict[str, object] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--model: expected key=value, got {part!r}")
        raw[key] = value
    return model_from_mapping(raw)


class ModelCatalog:
    """Name -> ModelSpec. Reads never see a half-replaced table (one dict swap)."""

    def __init__(self, models: Iterable[ModelSpec] = ()) -> None:
        self._by_name: dict[str, ModelSpec] = {}
        self.replace(models)

    def replace(self, models: Iterable[ModelSpec]) -> None:
        table: dict[str, ModelSpec] = {}
        for m in models:
            table[m.name] = m
        for m in list(table.values()):
            table.setdefault(m.triton_model, m)  # the Triton name resolves too, unless it is a catalog name
        self._by_name = table

    def get(self, name: str) -> ModelSpec:
        spec = self._by_name.get(name)
        if spec is None:
            raise NotFound(f"model {name!r} is not in the pool's model catalog")
        return spec

    def find(self, name: str) -> ModelSpec | None:
        return self._by_name.get(name)

    def all(self) -> tuple[ModelSpec, ...]:
        return tuple({m.name: m for m in self._by_name.values()}.values())
