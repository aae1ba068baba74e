"""The pool follows the registry: agents going online get their models loaded before their
first request; agents going offline or retired release their claims; the model table (what
Deploy may place and each model's footprint) follows the registry's model catalog.

Driven by the registry's Watch stream through the shared RegistryMirror; the loads run as
background tasks so a slow cold start never holds up the stream.
"""

from __future__ import annotations

import asyncio
import logging

from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2

from services.common.registry_mirror import AgentChange, ModelsChange
from services.pool.catalog import ModelSpec

log = logging.getLogger("harness.pool.registry")
GIB = 1024**3


def pinned_models(agent: registry_pb2.Agent) -> list[str]:
    """Models of the versions that take traffic (the newest version when there is no split)."""
    live = {t.version for t in agent.traffic if t.weight > 0}
    versions = [v for v in agent.versions if v.version in live] or list(agent.versions[-1:])
    return list(dict.fromkeys(m for v in versions for m in v.models))


def _online(agent: registry_pb2.Agent | None) -> bool:
    return agent is not None and agent.state == common_pb2.AGENT_STATE_ONLINE


def _gone(agent: registry_pb2.Agent | None) -> bool:
    return agent is None or agent.state in (common_pb2.AGENT_STATE_OFFLINE, common_pb2.AGENT_STATE_RETIRED)


class RegistryFollower:
    def __init__(self, app, static_models: tuple[ModelSpec, ...] = ()) -> None:
        self._app = app
        self._static = static_models  # from config; the registry's entries win on a clash
        self._tasks: set[asyncio.Task] = set()

    def __call__(self, event: object) -> None:
        if isinstance(event, ModelsChange):
            self._replace_models(event.models)
        elif not isinstance(event, AgentChange):
            return  # JWT settings and the like: not the pool's business
        elif _online(event.after) and not _online(event.before):
            models = pinned_models(event.after)
            if models:
                self._spawn(self._app.on_agent_online(models, event.name), f"warm {event.name}")
        elif _gone(event.after) and event.before is not None and not _gone(event.before):
            # Draining keeps the models (in-flight work finishes); offline or retired frees them.
            self._spawn(self._app.on_agent_offline(event.name), f"release {event.name}")

    def _replace_models(self, models: tuple[registry_pb2.Model, ...]) -> None:
        table = {m.name: m for m in self._static}
        for m in models:
            if m.memory_gib > 0 and m.triton_model:
                table[m.name] = ModelSpec(m.name, m.triton_model, int(m.memory_gib * GIB))
        self._app.catalog.replace(table.values())

    def _spawn(self, coro, what: str) -> None:
        async def run() -> None:
            try:
                result = await coro
                if isinstance(result, dict) and any(result.values()):
                    log.warning("%s: %s", what, {k: v for k, v in result.items() if v})
            except Exception:
                log.exception("%s failed", what)

        task = asyncio.get_running_loop().create_task(run(), name=what)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_idle(self) -> None:
        """Waits for the loads and releases started so far (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
