"""The one plugin registry: factories by (kind, name), used by the scheduler (filter, scorer,
picker), PII recognizers and advisor rules. Each family fills its registry from an explicit
list in one place (never as a side effect of importing a module), and has a conformance test
that runs every plugin listed."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class PluginRegistry:
    """Plugin factories by (kind, name). Params (from YAML or a policy) become keyword arguments."""

    def __init__(self, kinds: Iterable[str], plugins: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.kinds = tuple(kinds)
        self._plugins: dict[tuple[str, str], Callable[..., Any]] = {}
        for kind, named in (plugins or {}).items():
            for name, factory in named.items():
                self.register(kind, name)(factory)

    def register(self, kind: str, name: str) -> Callable[[T], T]:
        """Adds a factory (usable as a class decorator on a registry of one's own)."""
        if kind not in self.kinds:
            raise ValueError(f"plugin kind must be one of {self.kinds}, got {kind!r}")

        def decorate(factory: T) -> T:
            if (kind, name) in self._plugins:
                raise ValueError(f"{kind} plugin {name!r} is already registered")
            self._plugins[(kind, name)] = factory  # type: ignore[assignment]
            return factory

        return decorate

    def names(self, kind: str) -> list[str]:
        """In the order they were listed."""
        return [n for k, n in self._plugins if k == kind]

    def get(self, kind: str, name: str) -> Callable[..., Any]:
        factory = self._plugins.get((kind, name))
        if factory is None:
            raise KeyError(f"no {kind} named {name!r} (known: {', '.join(self.names(kind))})")
        return factory

    def build(self, kind: str, name: str, params: Mapping[str, Any] | None = None) -> Any:
        """Constructs plugin ``name``; ValueError for an unknown plugin, an unknown or missing
        param, or a bad value (the plugin's own check)."""
        factory = self._plugins.get((kind, name))
        if factory is None:
            raise ValueError(f"unknown {kind} {name!r}; known: {self.names(kind)}")
        params = dict(params or {})
        accepted = {
            p.name
            for p in inspect.signature(factory).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        unknown = sorted(set(params) - accepted)
        if unknown:
            raise ValueError(f"{kind} {name!r}: unknown param(s) {unknown}; accepted: {sorted(accepted)}")
        try:
            return factory(**params)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{kind} {name!r}: {exc}") from exc
