"""Scheduling profiles and their YAML config.

A profile is a named pipeline: filters, weighted scorers, one picker. The selection section
maps a request to a profile by SLO class and agent type. Format (see profiles.yaml)::

    memory: {prefix_block_tokens: 64, ...}          # optional, MemoryConfig fields
    profiles:
      default:
        filters: [model-ready, healthy, {type: not-saturated, params: {max_waiting: 5}}]
        scorers: [{type: prefix-cache, weight: 3}, {type: queue-depth, weight: 2}]
        picker: max-score                            # optional, default max-score
    selection:
      precedence: [slo_class, agent_type]            # optional, this order by default
      slo_class: {realtime: low-latency}
      agent_type: {rag: prefix-heavy}
      default: default

Every mistake raises ValueError naming the profile and plugin, at load time, never per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.router.scheduling.builtin import REGISTRY
from services.router.scheduling.memory import MemoryConfig
from services.router.scheduling.registry import (
    FILTER,
    PICKER,
    SCORER,
    Filter,
    Picker,
    PluginRegistry,
    Scorer,
)
from services.router.scheduling.types import SLO_CLASSES, SchedulingRequest

DEFAULT_PROFILES_PATH = Path(__file__).with_name("profiles.yaml")
_SELECTORS = ("slo_class", "agent_type")


@dataclass(frozen=True)
class WeightedScorer:
    name: str  # the plugin type, or the entry's own ``name`` when a type appears twice
    weight: float
    scorer: Scorer


@dataclass(frozen=True)
class Profile:
    """One filter -> score -> pick pipeline. Readiness filters should come before saturation
    filters: the filter that empties the list decides the outcome (NO_READY or SATURATED)."""

    name: str
    filters: tuple[tuple[str, Filter], ...]
    scorers: tuple[WeightedScorer, ...]
    picker_name: str
    picker: Picker


@dataclass(frozen=True)
class ProfileSelector:
    """Maps a request to a profile name: the first selector in ``precedence`` with a mapping
    for the request wins, else ``default``."""

    default: str
    slo_class: Mapping[str, str]
    agent_type: Mapping[str, str]
    precedence: tuple[str, ...] = _SELECTORS

    def select(self, request: SchedulingRequest) -> str:
        for key in self.precedence:
            if key == "slo_class":
                hit = self.slo_class.get(request.slo_class)
            else:
                hit = self.agent_type.get(request.agent_type)
            if hit:
                return hit
        return self.default


@dataclass(frozen=True)
class SchedulerConfig:
    profiles: Mapping[str, Profile]
    selector: ProfileSelector
    memory: MemoryConfig


def _check_keys(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _plugin_spec(entry: Any, kind: str, where: str) -> tuple[str, str, dict[str, Any], Any]:
    """(type, display name, params, weight or None) of one filters/scorers/picker entry."""
    if isinstance(entry, str):
        return entry, entry, {}, None
    if not isinstance(entry, Mapping) or not isinstance(entry.get("type"), str):
        raise ValueError(f"{where}: a {kind} is a name or a mapping with 'type', got {entry!r}")
    allowed = {"type", "name", "params"} | ({"weight"} if kind == SCORER else set())
    _check_keys(entry, allowed, f"{where}, {kind} {entry['type']!r}")
    params = entry.get("params") or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"{where}, {kind} {entry['type']!r}: params must be a mapping")
    return entry["type"], str(entry.get("name") or entry["type"]), dict(params), entry.get("weight")


def _build(registry: PluginRegistry, kind: str, entry: Any, where: str) -> tuple[str, str, Any, Any]:
    type_, name, params, weight = _plugin_spec(entry, kind, where)
    try:
        plugin = registry.build(kind, type_, params)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    return type_, name, plugin, weight


def build_profile(name: str, raw: Any, registry: PluginRegistry = REGISTRY) -> Profile:
    where = f"profile {name!r}"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be a mapping with filters, scorers, picker")
    _check_keys(raw, {"filters", "scorers", "picker"}, where)
    filters = []
    for entry in raw.get("filters") or []:
        _t, fname, plugin, _w = _build(registry, FILTER, entry, where)
        filters.append((fname, plugin))
    scorers = []
    seen: set[str] = set()
    for entry in raw.get("scorers") or []:
        type_, sname, plugin, weight = _build(registry, SCORER, entry, where)
        if weight is None:
            weight = 1.0
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise ValueError(f"{where}, scorer {type_!r}: weight must be a number >= 0, got {weight!r}")
        if sname in seen:
            raise ValueError(f"{where}, scorer {type_!r}: duplicate name {sname!r} (give each a 'name')")
        seen.add(sname)
        scorers.append(WeightedScorer(sname, float(weight), plugin))
    _t, pname, picker, _w = _build(registry, PICKER, raw.get("picker") or "max-score", where)
    return Profile(name, tuple(filters), tuple(scorers), pname, picker)


def _mapping(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not all(isinstance(v, str) for v in raw.values()):
        raise ValueError(f"{where}: must map names to profile names, got {raw!r}")
    return {str(k): v for k, v in raw.items()}


def build_selector(raw: Any, profiles: Mapping[str, Profile]) -> ProfileSelector:
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise ValueError("selection: must be a mapping")
    _check_keys(raw, {"default", "slo_class", "agent_type", "precedence"}, "selection")
    by_slo = _mapping(raw.get("slo_class"), "selection.slo_class")
    by_type = _mapping(raw.get("agent_type"), "selection.agent_type")
    bad = sorted(set(by_slo) - set(SLO_CLASSES))
    if bad:
        raise ValueError(f"selection.slo_class: unknown SLO class(es) {bad}; known: {list(SLO_CLASSES)}")
    precedence = tuple(raw.get("precedence") or _SELECTORS)
    if sorted(precedence) != sorted(set(precedence)) or not set(precedence) <= set(_SELECTORS):
        raise ValueError(
            f"selection.precedence: a list of distinct {list(_SELECTORS)}, got {list(precedence)}"
        )
    default = raw.get("default", "default")
    for where, target in [("selection.default", default)] + [
        (f"selection.{sel}.{key}", target)
        for sel, table in (("slo_class", by_slo), ("agent_type", by_type))
        for key, target in table.items()
    ]:
        if target not in profiles:
            raise ValueError(f"{where}: unknown profile {target!r}; defined: {sorted(profiles)}")
    return ProfileSelector(default, by_slo, by_type, precedence)


def parse_config(raw: Any, registry: PluginRegistry = REGISTRY) -> SchedulerConfig:
    """Builds every profile from a parsed YAML document."""
    if not isinstance(raw, Mapping):
        raise ValueError("scheduler config: top level must be a mapping")
    _check_keys(raw, {"memory", "profiles", "selection"}, "scheduler config")
    raw_profiles = raw.get("profiles")
    if not isinstance(raw_profiles, Mapping) or not raw_profiles:
        raise ValueError("scheduler config: 'profiles' must be a non-empty mapping")
    profiles = {str(name): build_profile(str(name), body, registry) for name, body in raw_profiles.items()}
    return SchedulerConfig(
        profiles, build_selector(raw.get("selection"), profiles), MemoryConfig.from_mapping(raw.get("memory"))
    )


def load_config(path: str | Path | None = None, registry: PluginRegistry = REGISTRY) -> SchedulerConfig:
    """Reads a profiles YAML file (the packaged default when ``path`` is None)."""
    text = Path(path or DEFAULT_PROFILES_PATH).read_text(encoding="utf-8")
    return parse_config(yaml.safe_load(text), registry)
