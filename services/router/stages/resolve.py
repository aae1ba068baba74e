"""Who is calling and what they may do: Identify, ResolveAgent, Authorize."""

from __future__ import annotations

import random
from collections.abc import Callable

from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2

from services.common import context as reqctx
from services.common.access import agent_subject, subject_label, user_subject
from services.common.errors import FailedPrecondition, NotFound, PermissionDenied, Unauthenticated
from services.common.registry_mirror import RegistryMirror
from services.router import records
from services.router.call import Call
from services.router.events import EventShipper
from services.router.flow import SloClass
from services.router.metrics import RouterMetrics
from services.router.pipeline import Stage
from services.router.views import AccessDecision


def pick_version(agent: registry_pb2.Agent) -> str:
    weights = [(t.version, t.weight) for t in agent.traffic if t.weight > 0]
    if not weights:
        if not agent.versions:
            raise FailedPrecondition(
                f"agent {agent.name!r} has no versions; add one with `harness versions create {agent.name} v1 --model MODEL`"
            )
        return agent.versions[-1].version
    return random.choices([v for v, _ in weights], weights=[w for _, w in weights])[0]


async def catalog_name(registry: RegistryMirror, pinned, name: str) -> str:
    """The catalog name of a pinned model that maps to Triton model `name` (else `name`)."""
    for candidate in pinned:
        try:
            if (await registry.model(candidate)).triton_model == name:
                return candidate
        except NotFound:
            continue
    return name


def require_caller(ident: reqctx.Identity) -> None:
    """A generation needs both an agent (its certificate) and a user (a token or API key)."""
    if not ident.agent:
        raise Unauthenticated(
            "no agent identity: call through the Harness front door with an agent client certificate"
        )
    if not ident.user:
        raise Unauthenticated("no user credentials: send 'authorization: Bearer <jwt>' or 'x-api-key'")


class Identify(Stage):
    """The agent comes from the client certificate, the user from the bearer credential."""

    name = "identify"

    async def enter(self, call: Call) -> None:
        call.ctx = reqctx.current()
        require_caller(call.ctx.identity)


class ResolveAgent(Stage):
    """The agent's record, its version (canary split), the model it may use and its SLO class."""

    name = "resolve-agent"

    def __init__(self, registry: RegistryMirror) -> None:
        self.registry = registry

    async def enter(self, call: Call) -> None:
        agent = (await self.resolve_version(call)).agent
        model = call.inp.model or await self.default_model(call)
        if not model:
            raise FailedPrecondition(f"agent {agent.name!r} version {call.agent_version} pins no model")
        if model not in call.pinned:
            # Triton and OpenAI clients name the backend model (e.g. "llama-3-8b-instruct").
            model = await catalog_name(self.registry, call.pinned, model)
        call.model = model
        if model not in call.pinned:
            raise PermissionDenied(
                f"agent {agent.name!r} version {call.agent_version} may use {list(call.pinned)}, not {model!r}"
            )
        call.catalog = await self.registry.model(model)

    async def resolve_version(self, call: Call) -> Call:
        """The agent (online, in the key's project), its version (canary split) and the version's
        pins, its team and SLO class: what every path needs before it looks at its own input."""
        agent = await online_agent(self.registry, call.ctx.identity)
        call.agent = agent
        call.agent_version = pick_version(agent)
        call.version = next(v for v in agent.versions if v.version == call.agent_version)
        call.pinned = tuple(call.version.models)
        call.team = await self.registry.project_team(agent.project)
        call.slo = SloClass.from_proto(agent.slo.slo_class)
        return call

    async def default_model(self, call: Call) -> str:
        """The model of a call that names none: the version's first (its primary), or for an
        embedding call the first embedding model it pins."""
        if not call.embedding:
            return call.pinned[0] if call.pinned else ""
        for name in call.pinned:
            try:
                if (await self.registry.model(name)).kind == registry_pb2.MODEL_KIND_EMBEDDING:
                    return name
            except NotFound:
                continue
        raise FailedPrecondition(
            f"agent {call.agent.name!r} version {call.agent_version} pins no embedding model; "
            f"pin one (`harness versions create {call.agent.name} VERSION --model EMBEDDING_MODEL`)"
        )


class Authorize(Stage):
    """casbin: the user may invoke the agent, and the agent may use the model."""

    name = "authorize"

    def __init__(self, registry: RegistryMirror, events: EventShipper, metrics: RouterMetrics | None) -> None:
        self.registry = registry
        self.events = events
        self.metrics = metrics

    async def enter(self, call: Call) -> None:
        agent = call.agent.name
        call.rule = (await self.check(call, user_subject(call.ctx.identity.user), f"agent:{agent}")).rule
        await self.check(call, agent_subject(agent), f"model:{call.model}")

    async def check(self, call: Call, subject: str, obj: str, action: str = "invoke") -> AccessDecision:
        try:
            project = call.agent.project if call.agent is not None else ""  # as call.facts() says
            return await check_access(self.registry, self.events, project, call.facts, subject, obj, action)
        except PermissionDenied:
            call.audited = True
            who = "agent" if subject.startswith("agent:") else "user"
            if self.metrics is not None:
                self.metrics.authz_denials.labels(call.agent_name, who).inc()
            raise


async def online_agent(registry: RegistryMirror, ident: reqctx.Identity) -> registry_pb2.Agent:
    """The calling agent's record, refused unless it is online and in the API key's project."""
    agent = await registry.agent(ident.agent)
    if agent.state != common_pb2.AGENT_STATE_ONLINE:
        state = common_pb2.AgentState.Name(agent.state).removeprefix("AGENT_STATE_").lower()
        raise FailedPrecondition(
            f"agent {agent.name!r} is {state}, not online; run `harness agents state {agent.name} online`"
        )
    if ident.project and ident.project != agent.project:
        raise PermissionDenied(f"this API key is scoped to project {ident.project!r}, not {agent.project!r}")
    return agent


async def check_access(
    registry: RegistryMirror,
    events: EventShipper,
    project: str,
    facts_of: Callable[[], records.CallFacts],
    subject: str,
    obj: str,
    action: str,
) -> AccessDecision:
    """casbin's decision in `project`; a denial is audited (with the rule that matched) and
    raised. The call's facts (`facts_of`) are built only for that record."""
    decision = await registry.check(subject, project, obj, action)
    if not decision.allowed:
        denied = records.CallFacts(**{**facts_of().__dict__, "rule": decision.rule})
        events.emit_audit(records.authz_denied_event(denied, obj, action))
        raise PermissionDenied(
            f"{subject_label(subject)} may not {action} {obj} in project {project!r}; "
            "ask a project admin for a policy (`harness policies add`)"
        )
    return decision
