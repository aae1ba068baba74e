"""Local views of registry and pool state, so the hot path does not wait on other services.

Thin slice: agents, access decisions and the model catalog are read from the registry and
cached with a short TTL (the first request for an agent fills the cache); endpoints are
polled from the pool in the background. The registry and pool issues replace both with
their watch streams behind the same methods.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc
from harness.common.v1 import common_pb2
from harness.pool.v1 import pool_pb2, pool_pb2_grpc
from harness.registry.v1 import registry_pb2, registry_pb2_grpc

from services.common.context import Identity, outgoing_metadata
from services.common.errors import NotFound, Unauthenticated, Unavailable

log = logging.getLogger("harness.router.views")
K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Caches loader results per key for `ttl_s`; concurrent misses on one key share one load."""

    def __init__(self, ttl_s: float, loader: Callable[[K], Awaitable[V]], max_entries: int = 10_000) -> None:
        self._ttl = ttl_s
        self._loader = loader
        self._max = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._inflight: dict[K, asyncio.Future[V]] = {}

    async def get(self, key: K) -> V:
        hit = self._entries.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await self._loader(key)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._inflight.pop(key, None)
        if len(self._entries) >= self._max:
            self._entries.clear()  # crude bound; entries are cheap to reload
        self._entries[key] = (now + self._ttl, value)
        future.set_result(value)
        return value

    def invalidate(self, key: K) -> None:
        self._entries.pop(key, None)


@dataclass(frozen=True)
class AccessDecision:
    allowed: bool
    rule: str


def _map_registry_error(exc: grpc.aio.AioRpcError, what: str) -> Exception:
    if exc.code() == grpc.StatusCode.NOT_FOUND:
        return NotFound(exc.details() or f"{what} not found")
    if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(exc.details() or "credentials rejected")
    return Unavailable(f"registry unavailable while resolving {what}: {exc.code().name}")


class RegistryView:
    def __init__(self, channel: grpc.aio.Channel, ttl_s: float = 5.0) -> None:
        self._stub = registry_pb2_grpc.RegistryStub(channel)
        self._agents: TtlCache[str, registry_pb2.Agent] = TtlCache(ttl_s, self._load_agent)
        self._access: TtlCache[tuple[str, str, str, str], AccessDecision] = TtlCache(ttl_s, self._load_access)
        self._models: TtlCache[str, dict[str, registry_pb2.Model]] = TtlCache(ttl_s, self._load_models)
        self._api_keys: TtlCache[str, Identity] = TtlCache(ttl_s, self._load_api_key)

    async def agent(self, name: str) -> registry_pb2.Agent:
        return await self._agents.get(name)

    async def check(self, subject: str, domain: str, obj: str, action: str) -> AccessDecision:
        return await self._access.get((subject, domain, obj, action))

    async def model(self, name: str) -> registry_pb2.Model:
        models = await self._models.get("")
        if name not in models:
            self._models.invalidate("")
            models = await self._models.get("")
        if name not in models:
            raise NotFound(f"model {name!r} is not in the registry's model catalog")
        return models[name]

    async def resolve_api_key(self, secret: str) -> Identity:
        return await self._api_keys.get(secret)

    async def _load_agent(self, name: str) -> registry_pb2.Agent:
        try:
            resp = await self._stub.GetAgent(
                registry_pb2.GetAgentRequest(name=name), timeout=2.0, metadata=outgoing_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(
                    f"agent {name!r} is not registered; register it in the registry first"
                ) from exc
            raise _map_registry_error(exc, f"agent {name!r}") from exc
        return resp.agent

    async def _load_access(self, key: tuple[str, str, str, str]) -> AccessDecision:
        sub, dom, obj, act = key
        try:
            resp = await self._stub.CheckAccess(
                registry_pb2.CheckAccessRequest(subject=sub, domain=dom, object=obj, action=act),
                timeout=2.0,
                metadata=outgoing_metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            raise _map_registry_error(exc, f"access of {sub} to {obj}") from exc
        return AccessDecision(resp.allowed, resp.rule)

    async def _load_models(self, _key: str) -> dict[str, registry_pb2.Model]:
        models: dict[str, registry_pb2.Model] = {}
        token = ""
        while True:
            try:
                resp = await self._stub.ListModels(
                    registry_pb2.ListModelsRequest(
                        page=common_pb2.PageRequest(page_size=1000, page_token=token)
                    ),
                    timeout=2.0,
                    metadata=outgoing_metadata(),
                )
            except grpc.aio.AioRpcError as exc:
                raise _map_registry_error(exc, "the model catalog") from exc
            models.update({m.name: m for m in resp.models})
            token = resp.page.next_page_token
            if not token:
                return models

    async def _load_api_key(self, secret: str) -> Identity:
        try:
            resp = await self._stub.AuthenticateApiKey(
                registry_pb2.AuthenticateApiKeyRequest(secret=secret), timeout=2.0
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND):
                raise Unauthenticated("API key rejected: unknown, revoked or expired") from exc
            raise _map_registry_error(exc, "an API key") from exc
        return Identity(
            user=resp.user.name, auth_method="api_key", roles=tuple(resp.user.roles), project=resp.key.project
        )


@dataclass(frozen=True)
class Target:
    endpoint: str
    address: str
    gpu_type: str
    waiting: int
    active: int


class EndpointView:
    """Endpoints and their ready models, refreshed from the pool in the background."""

    def __init__(self, channel: grpc.aio.Channel, interval_s: float = 0.5) -> None:
        self._stub = pool_pb2_grpc.PoolStub(channel)
        self._interval = interval_s
        self._by_model: dict[str, list[Target]] = {}
        self._task: asyncio.Task | None = None
        self._first = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="endpoint-view")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def wait_ready(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._first.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def candidates(self, triton_model: str) -> list[Target]:
        return list(self._by_model.get(triton_model, ()))

    def pick(self, triton_model: str, exclude: frozenset[str] = frozenset()) -> Target:
        """Least-loaded ready endpoint (random tie-break). The router issue brings the full scheduler."""
        options = [t for t in self._by_model.get(triton_model, ()) if t.endpoint not in exclude]
        if not options:
            raise Unavailable(
                f"no ready endpoint serves model {triton_model!r}; deploy it in the pool or wait for it to load"
            )
        low = min(t.waiting + t.active for t in options)
        return random.choice([t for t in options if t.waiting + t.active == low])

    def apply(self, endpoints: list[pool_pb2.Endpoint]) -> None:
        by_model: dict[str, list[Target]] = {}
        for ep in endpoints:
            if ep.health != pool_pb2.ENDPOINT_HEALTH_HEALTHY:
                continue
            for m in ep.models:
                if m.state == pool_pb2.MODEL_STATE_READY:
                    target = Target(ep.name, ep.address, ep.gpu_type, m.waiting_requests, m.active_requests)
                    by_model.setdefault(m.name, []).append(target)
        self._by_model = by_model
        self._first.set()

    async def _run(self) -> None:
        while True:
            try:
                resp = await self._stub.ListEndpoints(pool_pb2.ListEndpointsRequest(), timeout=2.0)
                self.apply(list(resp.endpoints))
            except grpc.aio.AioRpcError as exc:
                log.warning("pool unreachable (%s); keeping last known endpoints", exc.code().name)
            await asyncio.sleep(self._interval)
