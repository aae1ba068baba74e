"""A local copy of the registry, fed by the registry's Watch stream (routers, the pool).

The hot path reads agents, users (for their rate limits), the model catalog and access rules
from memory; it never waits on
the registry. A background task holds a Watch open: the first message is a snapshot, then
deltas arrive as the registry changes (well under a second). When the stream breaks (the
registry restarts, the network drops), the router keeps serving from the copy it has and
reconnects with the last revision it applied, so it gets exactly the changes it missed (or a
fresh snapshot if the registry no longer has them).

API keys are the exception: the stream carries key metadata, never secrets or their hashes,
so a key is resolved by one AuthenticateApiKey call and cached briefly; a revocation arrives
on the stream like any change and the key is refused from then on, cached or not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from harness.registry.v1 import registry_pb2, registry_pb2_grpc

from services.common.access import apply_rule, explain, new_memory_enforcer
from services.common.context import BOUND_AGENT, Identity, outgoing_metadata
from services.common.errors import NotFound, Unauthenticated, Unavailable
from services.common.streams import BackgroundFollower
from services.common.ttl_cache import TtlCache

log = logging.getLogger("harness.registry_mirror")
MAX_CACHED_DECISIONS = 100_000
API_KEY_ID = "api_key_id"  # Identity.claims entry naming the key an identity was resolved from
MAX_REVOKED_KEYS = 100_000
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class AccessDecision:
    allowed: bool
    rule: str


def map_registry_error(exc: grpc.aio.AioRpcError, what: str) -> Exception:
    if exc.code() == grpc.StatusCode.NOT_FOUND:
        return NotFound(exc.details() or f"{what} not found")
    if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(exc.details() or "credentials rejected")
    return Unavailable(f"registry unavailable while resolving {what}: {exc.code().name}")


Kind = registry_pb2.EntityKind


class RegistryMirror(BackgroundFollower):
    _task_name = "registry-mirror"

    def __init__(
        self,
        channel: grpc.aio.Channel,
        api_key_ttl_s: float = 5.0,
        ready_timeout_s: float = 5.0,
        max_backoff_s: float = 2.0,
    ) -> None:
        super().__init__()
        self._stub = registry_pb2_grpc.RegistryStub(channel)
        self._ready_timeout = ready_timeout_s
        self._max_backoff = max_backoff_s
        self.revision = 0
        self.connected = False
        self._agents: dict[str, registry_pb2.Agent] = {}
        self._models: dict[str, registry_pb2.Model] = {}
        self._users: dict[str, registry_pb2.User] = {}
        self._tools: dict[str, registry_pb2.Tool] = {}  # "name@version" -> tool
        self._projects: dict[str, registry_pb2.Project] = {}
        self._rules: set[tuple[str, tuple[str, ...]]] = set()
        self._enforcer = new_memory_enforcer()
        self._pending: _Tables | None = None  # a snapshot arriving in parts
        self.jwt_settings: registry_pb2.JwtSettings | None = None  # the registry's, when set
        self._decisions: dict[tuple[str, str, str, str], AccessDecision] = {}  # until rules change
        self._listeners: list[Callable[[AgentChange | ModelsChange | JwtSettingsChange], None]] = []
        self._api_keys: TtlCache[str, Identity] = TtlCache(api_key_ttl_s, self._load_api_key)
        # Key ids revoked (or deleted) as the watch reported them: a cached identity of one is
        # refused at once, not when its cache entry expires.
        self._revoked_keys: set[str] = set()
        self._changed = asyncio.Condition()  # notified after each applied message (tests wait on it)

    # --- lifecycle --------------------------------------------------------------------------
    async def wait_for_revision(self, revision: int, timeout: float) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.revision >= revision)

    # --- reads on the hot path --------------------------------------------------------------
    async def _ready(self) -> None:
        if not self.ready and not await self.wait_ready(self._ready_timeout):
            raise Unavailable(
                "the router has no copy of the registry yet (registry unreachable); retry shortly"
            )

    async def agent(self, name: str) -> registry_pb2.Agent:
        await self._ready()
        agent = self._agents.get(name)
        if agent is None:
            raise NotFound(f"agent {name!r} is not registered; register it in the registry first")
        return agent

    def agents_now(self) -> list[registry_pb2.Agent]:
        """Every agent of the current copy (no waiting: empty before the first snapshot)."""
        return list(self._agents.values())

    async def model(self, name: str) -> registry_pb2.Model:
        await self._ready()
        model = self._models.get(name)
        if model is None:
            raise NotFound(f"model {name!r} is not in the registry's model catalog")
        return model

    async def tool(self, name: str, version: str = "") -> registry_pb2.Tool | None:
        """The tool `name` at `version`, or its newest version when `version` is empty."""
        await self._ready()
        if version:
            return self._tools.get(f"{name}@{version}")
        versions = [t for t in self._tools.values() if t.name == name]
        return max(versions, key=lambda t: _version_key(t.version), default=None)

    async def user(self, name: str) -> registry_pb2.User | None:
        """The registry's record of a user; None when unknown (a JWT subject need not be registered)."""
        await self._ready()
        return self._users.get(name)

    async def project_team(self, project: str) -> str:
        """The team that owns `project` ("" when unknown): usage and budgets are charged to it."""
        await self._ready()
        found = self._projects.get(project)
        return found.team if found else ""

    async def check(self, subject: str, domain: str, obj: str, action: str) -> AccessDecision:
        await self._ready()
        key = (subject, domain, obj, action)
        decision = self._decisions.get(key)
        if decision is None:
            # casbin re-parses its matcher on every enforce (~1 ms): decide once per rule set.
            allowed, rule = explain(self._enforcer, subject, domain, obj, action)
            # Same wording as the registry's CheckAccess: "p, sub, dom, obj, act, eft".
            decision = AccessDecision(allowed, ", ".join(("p", *rule)) if rule else "")
            if len(self._decisions) >= MAX_CACHED_DECISIONS:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    async def resolve_api_key(self, secret: str) -> Identity:
        ident = await self._api_keys.get(secret)
        if ident.claims.get(API_KEY_ID) in self._revoked_keys:
            self._api_keys.invalidate(secret)
            raise Unauthenticated("API key rejected: unknown, revoked or expired")
        bound = ident.claims.get(BOUND_AGENT)
        if bound:  # the agent's switch, as the Watch stream last said: turning it off takes effect now
            agent = self._agents.get(bound)
            if agent is None or not agent.api_key_auth:
                self._api_keys.invalidate(secret)
                raise Unauthenticated(
                    f"API key {ident.claims.get(API_KEY_ID)} is bound to agent {bound!r}, which does not "
                    "accept API keys (now)"
                )
        return ident

    def _api_key_change(self, change: registry_pb2.Change) -> None:
        """A revoked or deleted key is refused from now on (its cached identities included)."""
        if change.deleted or change.api_key.HasField("revoke_time"):
            if len(self._revoked_keys) >= MAX_REVOKED_KEYS:  # bounded: forget, and re-ask the registry
                self._revoked_keys.clear()
                self._api_keys.clear()
            self._revoked_keys.add(change.key)

    # --- the stream -------------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = 0.05
        while True:
            try:
                call = self._stub.Watch(
                    registry_pb2.WatchRequest(since_revision=self.revision), metadata=outgoing_metadata()
                )
                async for message in call:
                    if not self.connected:
                        log.info("registry watch connected at revision %d", self.revision)
                    self.connected, backoff = True, 0.05
                    await self._apply(message)
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "registry watch broke (%s); serving revision %d until it reconnects",
                    exc.code().name,
                    self.revision,
                )
            except Exception:  # a change that cannot be applied must not end the watch for good
                log.exception(
                    "applying a registry change failed; watching again from revision %d", self.revision
                )
            self.connected = False
            self._pending = None  # a snapshot cut off mid-way is sent again whole
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _apply(self, message: registry_pb2.WatchResponse) -> None:
        if message.snapshot:
            # A large snapshot comes in parts (`more` on all but the last): build it aside and
            # swap it in whole, so the hot path never sees half a registry.
            if self._pending is None:
                self._pending = _Tables()
            for change in message.changes:
                if change.kind == Kind.ENTITY_KIND_API_KEY:
                    self._api_key_change(change)
                self._pending.apply(change)
            if message.more:
                return
            tables, self._pending = self._pending, None
            before_agents = self._agents
            self._agents, self._models, self._rules = tables.agents, tables.models, tables.rules
            self._users = tables.users
            self._tools = tables.tools
            self._projects = tables.projects
            before_jwt, self.jwt_settings = self.jwt_settings, tables.jwt
            self._enforcer = new_memory_enforcer(self._rules)
            self._decisions = {}
            self.revision = message.revision
            if self._listeners:  # a snapshot may hide any change: report every agent and model
                for name in before_agents.keys() - self._agents.keys():
                    self._notify(AgentChange(name, before_agents[name], None))
                for name, agent in self._agents.items():
                    self._notify(AgentChange(name, before_agents.get(name), agent))
                self._notify_models()
                if _jwt_bytes(before_jwt) != _jwt_bytes(self.jwt_settings):
                    self._notify(JwtSettingsChange(self.jwt_settings))
        else:
            models_changed = False
            for change in message.changes:
                if change.kind == Kind.ENTITY_KIND_API_KEY:
                    self._api_key_change(change)
                    continue
                if change.kind == Kind.ENTITY_KIND_POLICY:
                    rule = _policy_rule(change)
                    apply_rule(self._enforcer, rule[0], rule[1], change.deleted)
                    self._decisions = {}
                before = self._agents.get(change.key) if change.kind == Kind.ENTITY_KIND_AGENT else None
                if change.kind == Kind.ENTITY_KIND_JWT_SETTINGS:
                    self.jwt_settings = None if change.deleted else change.jwt_settings
                    self._notify(JwtSettingsChange(self.jwt_settings))
                    continue
                self._current.apply(change)
                if change.kind == Kind.ENTITY_KIND_AGENT and self._listeners:
                    self._notify(AgentChange(change.key, before, self._agents.get(change.key)))
                models_changed |= change.kind == Kind.ENTITY_KIND_MODEL
            if models_changed and self._listeners:
                self._notify_models()
            self.revision = max(self.revision, message.revision)
        self._mark_ready()
        async with self._changed:
            self._changed.notify_all()

    def subscribe(self, listener: Callable[[AgentChange | ModelsChange | JwtSettingsChange], None]) -> None:
        """Calls `listener` (synchronously, on the event loop) for every agent change and with
        the whole model catalog when it changes; after a snapshot, for every agent."""
        self._listeners.append(listener)

    def _notify(self, event: AgentChange | ModelsChange | JwtSettingsChange) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("registry mirror listener failed")

    def _notify_models(self) -> None:
        self._notify(ModelsChange(tuple(self._models.values())))

    @property
    def _current(self) -> _Tables:
        tables = _Tables(self._agents, self._models, self._rules, self._users)
        tables.tools = self._tools
        tables.projects = self._projects
        return tables

    async def _load_api_key(self, secret: str) -> Identity:
        try:
            resp = await self._stub.AuthenticateApiKey(
                registry_pb2.AuthenticateApiKeyRequest(secret=secret), timeout=2.0
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND):
                raise Unauthenticated("API key rejected: unknown, revoked or expired") from exc
            raise map_registry_error(exc, "an API key") from exc
        return Identity(
            user=resp.user.name, auth_method="api_key", roles=tuple(resp.user.roles), project=resp.key.project,
            claims={API_KEY_ID: resp.key.id, BOUND_AGENT: resp.key.agent},
        )  # fmt: skip


@dataclass(frozen=True)
class AgentChange:
    """An agent appeared, changed or went away (`after` is None when deleted)."""

    name: str
    before: registry_pb2.Agent | None
    after: registry_pb2.Agent | None


@dataclass(frozen=True)
class JwtSettingsChange:
    """The registry's JWT verification settings (None when they were removed)."""

    settings: registry_pb2.JwtSettings | None


@dataclass(frozen=True)
class ModelsChange:
    """The model catalog after a change."""

    models: tuple[registry_pb2.Model, ...]


class _Tables:
    """Agents, models, rules and users of one copy; applies changes in place."""

    def __init__(self, agents=None, models=None, rules=None, users=None) -> None:
        self.agents: dict[str, registry_pb2.Agent] = {} if agents is None else agents
        self.models: dict[str, registry_pb2.Model] = {} if models is None else models
        self.rules: set[tuple[str, tuple[str, ...]]] = set() if rules is None else rules
        self.users: dict[str, registry_pb2.User] = {} if users is None else users
        self.tools: dict[str, registry_pb2.Tool] = {}  # "name@version" -> tool
        self.projects: dict[str, registry_pb2.Project] = {}
        self.jwt: registry_pb2.JwtSettings | None = None

    def apply(self, change: registry_pb2.Change) -> None:
        if change.kind == Kind.ENTITY_KIND_AGENT:
            _put(self.agents, change.key, change.agent, change.deleted)
        elif change.kind == Kind.ENTITY_KIND_MODEL:
            _put(self.models, change.key, change.model, change.deleted)
        elif change.kind == Kind.ENTITY_KIND_USER:
            _put(self.users, change.key, change.user, change.deleted)
        elif change.kind == Kind.ENTITY_KIND_TOOL:
            _put(self.tools, change.key, change.tool, change.deleted)
        elif change.kind == Kind.ENTITY_KIND_PROJECT:
            _put(self.projects, change.key, change.project, change.deleted)
        elif change.kind == Kind.ENTITY_KIND_JWT_SETTINGS:
            self.jwt = None if change.deleted else change.jwt_settings
        elif change.kind == Kind.ENTITY_KIND_POLICY:
            rule = _policy_rule(change)
            (self.rules.discard if change.deleted else self.rules.add)(rule)


def _version_key(version: str) -> tuple:
    """Orders "1" < "2" < "10" and "1.2" < "1.10"; non-numeric parts compare as text."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in version.split("."))


def _jwt_bytes(settings: registry_pb2.JwtSettings | None) -> bytes:
    return settings.SerializeToString() if settings is not None else b""


def _put(table: dict, key: str, value, deleted: bool) -> None:
    if deleted:
        table.pop(key, None)
    else:
        table[key] = value


def _policy_rule(change: registry_pb2.Change) -> tuple[str, tuple[str, ...]]:
    if change.deleted:  # no entity on a deletion: the key is the rule
        return _rule_from_key(change.key) or (change.policy.ptype, tuple(change.policy.values))
    return change.policy.ptype, tuple(change.policy.values)


def _rule_from_key(key: str) -> tuple[str, tuple[str, ...]] | None:
    """A deleted policy's key is its rule CSV ("p, sub, dom, obj, act, eft")."""
    parts = [part.strip() for part in key.split(",")]
    if len(parts) < 2 or parts[0] not in ("p", "g"):
        return None
    return parts[0], tuple(parts[1:])
