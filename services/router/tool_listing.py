"""Which tool actions the calling agent may call now: what a tool front door lists.

The same rules as a call (tools.py), asked without calling: the agent is online and in the API
key's project, the user may invoke it, its version pins the tool at an exact version, and casbin
lets the agent use the tool at each action's risk class. Nothing is audited here: listing decides
nothing, each call is still decided (and audited) on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.registry.v1 import registry_pb2

from services.common import context as reqctx
from services.common.access import agent_subject, user_subject
from services.common.errors import PermissionDenied
from services.router.stages.resolve import online_agent, require_caller
from services.router.stages.tool import risk_name


@dataclass(frozen=True)
class CallableAction:
    tool: registry_pb2.Tool
    action: registry_pb2.ToolAction

    @property
    def risk(self) -> str:
        return risk_name(self.action)


def served_versions(agent: registry_pb2.Agent) -> list[registry_pb2.AgentVersion]:
    """The versions a call may land on: those with traffic, else the newest (as pick_version)."""
    weighted = {t.version for t in agent.traffic if t.weight > 0}
    versions = [v for v in agent.versions if v.version in weighted]
    return versions or list(agent.versions[-1:])


def common_pins(versions: list[registry_pb2.AgentVersion]) -> dict[str, str]:
    """tool -> pinned version, for tools every served version pins alike: with a canary split a
    tool pinned by only one side would be refused on the other."""
    pins: dict[str, str] | None = None
    for version in versions:
        mine = {t.partition("@")[0]: t.partition("@")[2] for t in version.tools}
        pins = mine if pins is None else {k: v for k, v in pins.items() if mine.get(k) == v}
    return pins or {}


async def callable_actions(registry) -> list[CallableAction]:
    """Every (tool, action) the calling agent and user may call, sorted by tool and action."""
    ident = reqctx.current().identity
    require_caller(ident)
    agent = await online_agent(registry, ident)
    if not (
        await registry.check(user_subject(ident.user), agent.project, f"agent:{agent.name}", "invoke")
    ).allowed:
        raise PermissionDenied(
            f"user {ident.user!r} may not invoke agent {agent.name!r} in project {agent.project!r}; "
            "ask a project admin for a policy (`harness policies add`)"
        )
    found: list[CallableAction] = []
    for name, pin in sorted(common_pins(served_versions(agent)).items()):
        tool = await registry.tool(name, pin)
        if tool is None:
            continue
        for action in sorted(tool.actions, key=lambda a: a.name):
            decision = await registry.check(
                agent_subject(agent.name), agent.project, f"tool:{tool.name}", risk_name(action)
            )
            if decision.allowed:
                found.append(CallableAction(tool, action))
    return found
