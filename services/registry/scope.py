"""Which projects a caller may read in the registry (tenancy of reads; docs/security.md).

An admin user and a Harness service certificate (routers, pool, cost, seeder, the ops CLI) read
every project: routers and the pool copy the whole registry. Anyone else reads the projects
they act in, and every credential the call carries narrows that set:
- an API key: its project;
- an agent (certificate, or an agent-bound key): the agent's own project;
- a user token (JWT): the projects of the user's team (the user's registry record).
An object of another project is answered exactly as a missing one (NOT_FOUND), so a caller
learns nothing about it; a request that names another project (a filter, a policy domain) is
PERMISSION_DENIED, with the same message whether or not that project exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.common.context import Identity
from services.common.errors import NotFound, PermissionDenied
from services.registry import domain as d

if TYPE_CHECKING:
    from services.registry.store import Store


@dataclass(frozen=True)
class Scope:
    """The projects a caller reads; `projects` None means every project."""

    projects: frozenset[str] | None = None
    basis: str = ""  # why these projects, for messages ("API key of project 'ledger'")

    def sees(self, project: str) -> bool:
        return self.projects is None or project in self.projects

    def describe(self) -> str:
        names = ", ".join(sorted(self.projects or ())) or "none"
        return f"{names}: {self.basis}"

    def need_project(self, project: str, field: str) -> None:
        """PermissionDenied when a request names a project the caller does not act in."""
        if self.sees(project):
            return
        raise PermissionDenied(
            f"{field} {project!r} is not a project you act in (you act in {self.describe()}); name "
            "one of yours or leave it empty"
        )

    def only(self, project: str, field: str) -> frozenset[str] | None:
        """What a list may show: the projects in scope, after checking the caller's filter."""
        if project:
            self.need_project(project, field)
        return self.projects

    def missing(self, kind: str, name: str, hint: str) -> NotFound:
        """The answer for an object this caller may not see, the same as for one that does not
        exist, so it confirms nothing about other projects."""
        return NotFound(f"no {kind} {name!r} in the projects you act in ({self.describe()}); {hint}")

    def rules(self, rules: Iterable[d.PolicyRule]) -> list[d.PolicyRule]:
        """The rules of projects in scope ('*' rules belong to no project: admins only)."""
        return [r for r in rules if self.projects is None or rule_domain(r) in self.projects]


EVERY_PROJECT = Scope()
AGENTS_HINT = "`harness agents list` lists the agents you can read"


def visible_agent(store: Store, name: str, scope: Scope) -> d.Agent:
    """The agent, or for a scoped caller NotFound alike for a missing and a hidden one."""
    if scope.projects is None:
        return store.get_agent(name)
    try:
        agent = store.get_agent(name)
    except NotFound:
        raise scope.missing("agent", name, AGENTS_HINT) from None
    if not scope.sees(agent.project):
        raise scope.missing("agent", name, AGENTS_HINT)
    return agent


def key_holder(ident: Identity, user: str) -> str:
    """Whose API keys `ident` may list when asking for `user`'s ("" = everyone's): admins and
    Harness services any user's; a user only their own (who holds keys for which project is not
    every caller's business)."""
    if ident.is_admin or ident.service:
        return user
    if not ident.user or (user and user != ident.user):
        raise PermissionDenied("only admins list other users' API keys; ask for your own (user empty)")
    return ident.user


def rule_domain(rule: d.PolicyRule) -> str:
    return rule.values[1] if rule.ptype == "p" else rule.values[2]


def scope_of(store: Store, ident: Identity) -> Scope:
    """The caller's scope; reads the store for an agent's project and a user's team."""
    if ident.is_admin or ident.service:
        return EVERY_PROJECT
    parts: list[tuple[frozenset[str], str]] = []
    if ident.project:  # an API key (the registry gives keys no roles, so never admin)
        parts.append((frozenset({ident.project}), f"API key of project {ident.project!r}"))
    elif ident.user:
        parts.append(_user_part(store, ident.user))
    if ident.agent:
        parts.append(_agent_part(store, ident.agent))
    projects = frozenset.intersection(*(p for p, _ in parts)) if parts else frozenset()
    return Scope(projects, " and ".join(why for _, why in parts))


def _user_part(store: Store, user: str) -> tuple[frozenset[str], str]:
    team, projects = store.user_team_projects(user)
    return projects, (f"user {user!r} of team {team!r}" if team else f"user {user!r} is in no team")


def _agent_part(store: Store, agent: str) -> tuple[frozenset[str], str]:
    project = store.agent_project(agent)
    if not project:
        return frozenset(), f"agent {agent!r} is not registered"
    return frozenset({project}), f"agent {agent!r} of project {project!r}"
