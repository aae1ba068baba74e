"""Deleting what the registry creates: teams, projects, users (with their API keys), agents,
agent versions, catalog models and tools.

A mixin of `store.Store` (which provides `_tx`, `_need` and `_record`). Nothing is deleted
while something still refers to it: the refusal (FAILED_PRECONDITION) names what refers to it,
so an operator knows what to remove first. Every deletion is a change in the log, so routers
and the pool drop the entity from their copies through Watch.
"""

from __future__ import annotations

from casbin_sqlalchemy_adapter import CasbinRule
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from services.common.access import user_subject
from services.common.errors import FailedPrecondition, NotFound
from services.registry import domain as d
from services.registry.changelog import tool_key
from services.registry.models import (
    AgentRow,
    AgentVersionRow,
    ApiKeyRow,
    ModelRow,
    ProjectRow,
    TeamRow,
    ToolRow,
    UserRow,
)

SHOWN = 5  # referrers named in a refusal


def _refuse_if(what: str, referrers: list[str], hint: str) -> None:
    if referrers:
        names = ", ".join(referrers[:SHOWN]) + (
            f" and {len(referrers) - SHOWN} more" if len(referrers) > SHOWN else ""
        )
        raise FailedPrecondition(f"{what} is still used by {names}; {hint}")


def _rule_csvs(s: Session, *conditions) -> list[str]:
    rules = s.scalars(select(CasbinRule).where(or_(*conditions)).order_by(CasbinRule.id).limit(SHOWN + 1))
    return [", ".join(v for v in (r.ptype, r.v0, r.v1, r.v2, r.v3, r.v4) if v) for r in rules]


def _pinning(s: Session, matches) -> list[str]:
    """Agent versions (as "agent@version") whose pins satisfy `matches(models, tools)`."""
    rows = s.scalars(select(AgentVersionRow).order_by(AgentVersionRow.agent, AgentVersionRow.id))
    return [f"{v.agent}@{v.version}" for v in rows if matches(v.models or [], v.tools or [])]


class RemovalStore:
    """Delete operations; see `store.Store` for the transaction helpers used here."""

    def delete_team(self, name: str) -> None:
        with self._tx() as s:  # type: ignore[attr-defined]
            row = self._need(s, TeamRow, name, "team", "list teams with `harness teams list`")  # type: ignore[attr-defined]
            projects = list(
                s.scalars(select(ProjectRow.name).where(ProjectRow.team == name).limit(SHOWN + 1))
            )
            users = list(s.scalars(select(UserRow.name).where(UserRow.team == name).limit(SHOWN + 1)))
            used = [f"project {p}" for p in projects] + [f"user {u}" for u in users]
            _refuse_if(f"team {name!r}", used, "delete or move them first")
            s.delete(row)
            self._record(s, "team", name, deleted=True)  # type: ignore[attr-defined]

    def delete_project(self, name: str) -> None:
        with self._tx() as s:  # type: ignore[attr-defined]
            row = self._need(s, ProjectRow, name, "project", "list projects with `harness projects list`")  # type: ignore[attr-defined]
            agents = s.scalars(select(AgentRow.name).where(AgentRow.project == name).limit(SHOWN + 1))
            keys = s.scalars(select(ApiKeyRow.id).where(ApiKeyRow.project == name).limit(SHOWN + 1))
            rules = _rule_csvs(
                s,
                (CasbinRule.ptype == "p") & (CasbinRule.v1 == name),
                (CasbinRule.ptype == "g") & (CasbinRule.v2 == name),
            )
            used = (
                [f"agent {a}" for a in agents]
                + [f"API key {k}" for k in keys]
                + [f"rule '{r}'" for r in rules]
            )
            _refuse_if(f"project {name!r}", used, "delete the agents and keys and remove the rules first")
            s.delete(row)
            self._record(s, "project", name, deleted=True)  # type: ignore[attr-defined]

    def delete_user(self, name: str) -> list[str]:
        """Deletes the user and its API keys; returns the deleted keys' ids."""
        with self._tx() as s:  # type: ignore[attr-defined]
            row = self._need(s, UserRow, name, "user", "list users with `harness users list`")  # type: ignore[attr-defined]
            rules = _rule_csvs(s, CasbinRule.v0.in_((user_subject(name), name)))  # bare: older rules
            _refuse_if(f"user {name!r}", [f"rule '{r}'" for r in rules], "remove them first (RemovePolicy)")
            keys = list(s.scalars(select(ApiKeyRow).where(ApiKeyRow.user == name).order_by(ApiKeyRow.id)))
            for key in keys:
                s.delete(key)
                self._record(s, "api_key", key.id, deleted=True)  # type: ignore[attr-defined]
            s.flush()
            s.delete(row)
            self._record(s, "user", name, deleted=True)  # type: ignore[attr-defined]
            return [k.id for k in keys]

    def delete_agent(self, name: str) -> None:
        with self._tx() as s:  # type: ignore[attr-defined]
            row = self._need(s, AgentRow, name, "agent", "list agents with `harness agents list`")  # type: ignore[attr-defined]
            if row.state not in ("retired", "registered"):
                raise FailedPrecondition(
                    f"agent {name!r} is {row.state}; retire it first (harness agents state {name} draining, "
                    "then offline, then retired) so no router still sends it traffic"
                )
            s.delete(row)
            self._record(s, "agent", name, deleted=True)  # type: ignore[attr-defined]

    def delete_agent_version(self, agent: str, version: str) -> d.Agent:
        d.check_version_label(version)
        with self._tx() as s:  # type: ignore[attr-defined]
            row = self._need(s, AgentRow, agent, "agent", "list agents with `harness agents list`")  # type: ignore[attr-defined]
            found = next((v for v in row.versions if v.version == version), None)
            if found is None:
                known = ", ".join(v.version for v in row.versions) or "none"
                raise NotFound(f"agent {agent!r} has no version {version!r} (it has: {known})")
            weight = sum(w["weight"] for w in row.traffic or [] if w["version"] == version)
            if weight:
                raise FailedPrecondition(
                    f"version {version!r} of agent {agent!r} has {weight}% of its traffic; move it to "
                    f"another version first (harness traffic set {agent} VERSION=100)"
                )
            row.versions.remove(found)
            # Splits kept for rollback must not bring back a version that no longer exists.
            row.traffic_history = [
                split for split in row.traffic_history or [] if all(w["version"] != version for w in split)
            ]
            return self._bump(s, row)  # type: ignore[attr-defined]

    def delete_model(self, name: str) -> None:
        with self._tx() as s:  # type: ignore[attr-defined]
            row = self._need(s, ModelRow, name, "model", "list models with `harness models list`")  # type: ignore[attr-defined]
            pins = _pinning(s, lambda models, _tools: name in models)
            _refuse_if(f"model {name!r}", [f"agent version {p}" for p in pins], "delete those versions first")
            s.delete(row)
            self._record(s, "model", name, deleted=True)  # type: ignore[attr-defined]

    def delete_tool(self, name: str, version: str) -> None:
        label = tool_key(name, version)
        with self._tx() as s:  # type: ignore[attr-defined]
            if not name:
                d.check_required("tool name", name)
            row = s.get(ToolRow, (name, version))
            if row is None:
                raise NotFound(f"tool {label!r} is not in the catalog; list tools with `harness tools list`")
            others = s.scalars(
                select(ToolRow.version).where(ToolRow.name == name, ToolRow.version != version)
            )
            last = not list(others)  # a bare "name" pin resolves to any version: only the last one matters
            pins = _pinning(s, lambda _models, tools: label in tools or (last and name in tools))
            _refuse_if(f"tool {label!r}", [f"agent version {p}" for p in pins], "delete those versions first")
            s.delete(row)
            self._record(s, "tool", label, deleted=True)  # type: ignore[attr-defined]
