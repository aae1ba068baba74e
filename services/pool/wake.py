"""Waking deployments scaled to zero (ActivateDeployment): at most one wake per deployment.

A deployment the idle sweep scaled to zero (its claims' idle TTL) keeps its claims; the
endpoint table lists its model as scaled to zero in WatchEndpoints, so routers hold its
requests and ask for a wake instead of refusing them. `activate` answers at once: the wake
(placement, RepositoryModelLoad, the cold start) runs as a task, and many routers asking for
the same model while it runs start nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from services.common.errors import HarnessError, NotFound
from services.common.streams import cancel_all
from services.pool.deployment_types import DeploymentView
from services.pool.deployments import DeploymentManager

log = logging.getLogger("harness.pool.wake")


class Waker:
    def __init__(
        self,
        manager: DeploymentManager,
        on_done: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self.manager = manager
        self._on_done = on_done  # (model, error or "") once a wake ends, e.g. for the audit log
        self._tasks: dict[str, asyncio.Task] = {}

    def activate(self, model: str) -> tuple[bool, DeploymentView]:
        """(whether a wake is under way, the deployment now). NotFound for a model the catalog
        lacks or that no claim holds: a wake only restores what claims already asked for."""
        spec = self.manager.catalog.get(model)
        dep = self.manager.get(spec.name)
        if dep is None or not dep.claims:
            raise NotFound(
                f"model {spec.name!r} is not deployed: 'harness pool deployments deploy' it, or start an agent that uses it"
            )
        if not dep.scaled_to_zero:
            return False, self.manager.view(spec.name)  # type: ignore[return-value]
        if spec.name not in self._tasks:
            self._tasks[spec.name] = asyncio.get_running_loop().create_task(
                self._wake(spec.name), name=f"wake-{spec.name}"
            )
            log.info("waking %s from zero", spec.name)
        return True, self.manager.view(spec.name)  # type: ignore[return-value]

    def waking(self, model: str) -> bool:
        return model in self._tasks

    async def _wake(self, model: str) -> None:
        error = ""
        try:
            await self.manager.wake(model)
        except HarnessError as exc:  # it stays at zero; the next activation tries again
            error = exc.message
            log.warning("wake of %s failed: %s", model, error)
        finally:  # from here on an activation starts a new wake
            if self._tasks.get(model) is asyncio.current_task():
                del self._tasks[model]
        if self._on_done is not None:
            try:
                await self._on_done(model, error)
            except Exception:  # the audit record is best effort here; the wake happened
                log.exception("recording the wake of %s failed", model)

    async def close(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await cancel_all(list(self._tasks.values()))
