"""Loads this pool began that the endpoints' figures may not show yet: the memory and compute
they hold in reserve, so two plans a scrape apart never count the same free GPU twice.

Keys are (endpoint, gpu index, Triton model); a value is (bytes, monotonic time the load
returned or None while it runs) plus the compute share the replica is expected to use. A
finished load counts as placed until the endpoint's index shows it READY, or for
PENDING_GRACE_S at most (a few probe rounds): after that, an index without the model means
it is really gone.
"""

from __future__ import annotations

import time

from services.pool.endpoints import EndpointTable
from services.pool.placement import has_model
from services.pool.state import UNHEALTHY

PENDING_GRACE_S = 3.0

Key = tuple[str, int, str]


class PendingLoads:
    def __init__(self, table: EndpointTable) -> None:
        self.table = table
        self.loads: dict[Key, tuple[int, float | None]] = {}
        self._compute: dict[Key, float] = {}

    def begin(self, key: Key, size: int, compute_share: float = 0.0) -> None:
        self.loads[key] = (size, None)
        self._compute[key] = compute_share

    def finished(self, key: Key, size: int) -> None:
        self.loads[key] = (size, time.monotonic())

    def failed(self, key: Key) -> None:
        self.loads.pop(key, None)
        self._compute.pop(key, None)

    def running(self, triton_model: str) -> bool:
        """A load of `triton_model` has not returned yet."""
        return any(k[2] == triton_model and done is None for k, (_, done) in self.loads.items())

    def on(self, endpoint: str, triton_model: str) -> bool:
        self.prune()
        return any(k[0] == endpoint and k[2] == triton_model for k in self.loads)

    def bytes_by_gpu(self) -> dict[tuple[str, int], int]:
        """Reserved memory of loads the endpoints' figures do not show yet."""
        self.prune()
        out: dict[tuple[str, int], int] = {}
        for (endpoint, gpu, model), (size, _) in self.loads.items():
            state = self.table.get(endpoint)
            if state is not None and not has_model(state, model):
                out[(endpoint, gpu)] = out.get((endpoint, gpu), 0) + size
        return out

    def compute_by_gpu(self) -> dict[tuple[str, int], float]:
        """Compute shares promised to replicas whose traffic the utilisation cannot show yet."""
        self.prune()
        out: dict[tuple[str, int], float] = {}
        for key, share in self._compute.items():
            out[key[:2]] = out.get(key[:2], 0.0) + share
        return out

    def prune(self) -> None:
        """Forgets a finished load once the endpoint's index shows the model READY. An index that
        shows it LOADING may come from a probe taken before the load returned, so it does not
        count: forgetting the load then would report a ready replica as still loading."""
        now = time.monotonic()
        for key, (_, finished) in list(self.loads.items()):
            state = self.table.get(key[0])
            if (state is None or state.health == UNHEALTHY) or (
                finished is not None and (state.has_ready(key[2]) or now - finished > PENDING_GRACE_S)
            ):
                self.failed(key)
