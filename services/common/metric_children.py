"""Prometheus children by label values, looked up once per distinct set of values.

`metric.labels(...)` validates and stringifies the values and takes the metric's lock on every
call; a request path that counts the same few series over and over pays that each time. A
`Children` keeps the child for each tuple of values it has seen. It holds only what the metric
itself already holds (prometheus_client keeps every child until `remove`), and no code here
removes series; it is cleared, not grown, past `limit` distinct tuples.
"""

from __future__ import annotations

from typing import Any


class Children:
    def __init__(self, metric: Any, limit: int = 10_000) -> None:
        self._metric = metric
        self._limit = limit
        self._known: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._known.get(values)
        if child is None:
            if len(self._known) >= self._limit:
                self._known.clear()
            child = self._known[values] = self._metric.labels(*values)
        return child
