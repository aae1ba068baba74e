"""Agent part of the registry store: agents, versions, lifecycle state and traffic splits.

A mixin of `store.Store` (which provides `_tx`, `_sessions`, `_record`, `_need`, `_page`), kept
apart so each file stays readable.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.registry import convert_rows as rows
from services.registry import domain as d
from services.registry import limits
from services.registry.domain import now
from services.registry.models import AgentRow, AgentVersionRow, ModelRow, ProjectRow, ToolRow

MAX_TRAFFIC_HISTORY = 20  # splits a traffic rollback can step back through
_AGENT_HINT = "check the name with `harness agents list` or create it with `harness agents create`"


def _check_agent_fields(agent: d.Agent) -> None:
    d.check_label("agent", agent.name)
    limits.check_agent(agent)
    d.check_choice("agent type", agent.type, d.AGENT_TYPES)
    d.check_choice("slo_class", agent.slo.slo_class, d.SLO_CLASSES)
    for target in ("ttft_ms", "tbt_ms", "e2e_ms"):
        value = getattr(agent.slo, target)
        if value < 0:
            raise InvalidArgument(f"slo.{target} of agent {agent.name!r} is {value}; targets must be >= 0")
    for limit in ("rpm_limit", "tpm_limit"):
        if getattr(agent, limit) < 0:
            raise InvalidArgument(f"{limit} of agent {agent.name!r} must be >= 0 (0 = unlimited)")
    for rule in agent.pii:
        if not rule.kind:
            raise InvalidArgument(f"agent {agent.name!r}: every PII rule needs a kind (e.g. 'phone')")
        d.check_choice(f"mask mode of PII kind {rule.kind!r}", rule.mode, d.MASK_MODES)


def _check_weights(name: str, weights: list[d.TrafficWeight], known: list[str]) -> None:
    if not weights:
        raise InvalidArgument(f"traffic split for agent {name!r} is empty; give at least one version")
    limits.check_count("traffic", weights, limits.MAX_TRAFFIC_WEIGHTS)
    seen: set[str] = set()
    for w in weights:
        d.check_version_label(w.version, "traffic version")
        if w.version in seen:
            raise InvalidArgument(f"version {w.version!r} appears twice in the traffic split")
        seen.add(w.version)
        if not 0 <= w.weight <= 100:
            raise InvalidArgument(f"traffic weight of version {w.version!r} is {w.weight}; use 0..100")
        if w.version not in known:
            raise NotFound(
                f"agent {name!r} has no version {w.version!r} (it has: {', '.join(known) or 'none'}); "
                f"add it first: harness versions create {name} {w.version} --model MODEL"
            )
    total = sum(w.weight for w in weights)
    if total != 100:
        raise InvalidArgument(f"traffic weights of agent {name!r} sum to {total}; they must sum to 100")


class AgentStore:
    """Agent operations; see `store.Store` for the transaction helpers used here."""

    def _agent_row(self, s: Session, name: str) -> AgentRow:
        return self._need(s, AgentRow, name, "agent", _AGENT_HINT)  # type: ignore[attr-defined]

    def _bump(self, s: Session, row: AgentRow) -> d.Agent:
        row.revision = self._record(s, "agent", row.name)  # type: ignore[attr-defined]
        s.flush()
        s.refresh(row)  # reload versions added in this transaction
        return rows.agent(row)

    def create_agent(self, agent: d.Agent, trust_domain: str) -> d.Agent:
        """Registers `agent` in state REGISTERED; its SPIFFE id defaults from the trust domain."""
        _check_agent_fields(agent)
        spiffe_id = d.check_agent_spiffe_id(agent.spiffe_id, trust_domain, agent.name)
        with self._tx(f"agent {agent.name!r} already exists") as s:  # type: ignore[attr-defined]
            self._need(
                s,
                ProjectRow,
                agent.project,
                "project",
                "create it first: harness projects create NAME --team TEAM",
            )  # type: ignore[attr-defined]
            if s.get(AgentRow, agent.name):
                raise AlreadyExists(f"agent {agent.name!r} already exists; pick another name")
            row = AgentRow(
                name=agent.name,
                spiffe_id=spiffe_id,
                type=agent.type or "custom",
                project=agent.project,
                description=agent.description,
                state="registered",
                slo={k: getattr(agent.slo, k) for k in ("slo_class", "ttft_ms", "tbt_ms", "e2e_ms")},
                pii=[{"kind": p.kind, "mode": p.mode} for p in agent.pii],
                traffic=[],
                traffic_history=[],
                rpm_limit=agent.rpm_limit,
                tpm_limit=agent.tpm_limit,
            )
            s.add(row)
            return self._bump(s, row)

    def get_agent(self, name: str) -> d.Agent:
        with self._sessions() as s:  # type: ignore[attr-defined]
            return rows.agent(self._agent_row(s, name))

    def agent_project(self, name: str) -> str:
        """The agent's project ("" for an unknown agent)."""
        with self._sessions() as s:  # type: ignore[attr-defined]
            return s.scalar(select(AgentRow.project).where(AgentRow.name == name)) or ""

    def list_agents(
        self, project: str, type_: str, state: str, page: d.Page, projects: frozenset[str] | None = None
    ) -> tuple[list[d.Agent], int | None]:
        """Agents matching the filters; with `projects`, only agents of one of them."""
        stmt = select(AgentRow).order_by(AgentRow.name)
        if project:
            stmt = stmt.where(AgentRow.project == project)
        if projects is not None:
            stmt = stmt.where(AgentRow.project.in_(sorted(projects)))
        if type_:
            stmt = stmt.where(AgentRow.type == type_)
        if state:
            stmt = stmt.where(AgentRow.state == state)
        with self._sessions() as s:  # type: ignore[attr-defined]
            return self._page(s, stmt, page, rows.agent)  # type: ignore[attr-defined]

    def create_agent_version(self, agent: str, version: d.AgentVersion) -> d.Agent:
        """Adds a version pinning catalog models and tools; the first version gets 100% traffic."""
        d.check_version_label(version.version)
        limits.check_version(version)
        if not version.models:
            raise InvalidArgument(
                f"version {version.version!r} needs at least one model (the first is primary)"
            )
        if not all((*version.models, *version.tools)):
            raise InvalidArgument(f"version {version.version!r}: models and tools must not hold empty names")
        with self._tx(f"agent {agent!r} already has version {version.version!r}") as s:  # type: ignore[attr-defined]
            row = self._agent_row(s, agent)
            if row.state == "retired":
                raise FailedPrecondition(f"agent {agent!r} is retired; register a new agent instead")
            if len(row.versions) >= limits.MAX_VERSIONS:
                raise FailedPrecondition(
                    f"agent {agent!r} has {len(row.versions)} versions, the limit; delete an unused one first"
                )
            if any(v.version == version.version for v in row.versions):
                raise AlreadyExists(
                    f"agent {agent!r} already has version {version.version!r}; use a new version label"
                )
            for model in version.models:
                if s.get(ModelRow, model) is None:
                    raise NotFound(
                        f"model {model!r} is not in the catalog; register it first: harness models register {model} --triton-model TRITON_MODEL --memory-gib GIB"
                    )
            for ref in version.tools:
                name, _, tool_version = ref.partition("@")
                stmt = select(ToolRow.name).where(ToolRow.name == name)
                if tool_version:
                    stmt = stmt.where(ToolRow.version == tool_version)
                if s.scalar(stmt.limit(1)) is None:
                    raise NotFound(
                        f"tool {ref!r} is not in the catalog (`harness tools list` shows it); register it first"
                    )
            row.versions.append(
                AgentVersionRow(
                    version=version.version,
                    models=list(version.models),
                    tools=list(version.tools),
                    default_sampling=dict(version.default_sampling),
                    meta=dict(version.metadata),
                    create_time=now(),
                )
            )
            if not row.traffic:
                row.traffic = [{"version": version.version, "weight": 100}]
            return self._bump(s, row)

    def set_agent_state(self, agent: str, state: str) -> d.Agent:
        """Moves along a legal lifecycle edge; asking for the current state is a no-op."""
        d.check_choice("agent state", state, d.AGENT_STATES, allow_empty=False)
        with self._tx() as s:  # type: ignore[attr-defined]
            row = self._agent_row(s, agent)
            if row.state == state:
                return rows.agent(row)
            legal = d.legal_next_states(row.state)
            if state not in legal:
                nxt = ", ".join(legal) if legal else "nothing (retired is final)"
                raise FailedPrecondition(
                    f"agent {agent!r} is {row.state} and cannot go to {state}; from {row.state} it can "
                    f"go to: {nxt}"
                )
            if state == "online" and not row.versions:
                raise FailedPrecondition(
                    f"agent {agent!r} has no versions; add one before going online: harness versions create {agent} v1 --model MODEL"
                )
            row.state = state
            return self._bump(s, row)

    def set_agent_api_key_auth(self, agent: str, enabled: bool) -> d.Agent:
        """Allows or stops agent-bound API keys for the agent (a change in the log: audited)."""
        with self._tx() as s:  # type: ignore[attr-defined]
            row = self._agent_row(s, agent)
            if bool(row.api_key_auth) == enabled:
                return rows.agent(row)
            row.api_key_auth = enabled
            return self._bump(s, row)

    def set_traffic_split(self, agent: str, weights: list[d.TrafficWeight]) -> d.Agent:
        """Replaces the split (the old one is kept for rollback); an identical split is a no-op."""
        with self._tx() as s:  # type: ignore[attr-defined]
            row = self._agent_row(s, agent)
            _check_weights(agent, weights, [v.version for v in row.versions])
            new = rows.traffic_json(weights)
            if new == row.traffic:
                return rows.agent(row)
            # Reassign (not mutate) JSON columns so SQLAlchemy sees the change.
            row.traffic_history = [*(row.traffic_history or []), row.traffic][-MAX_TRAFFIC_HISTORY:]
            row.traffic = new
            return self._bump(s, row)

    def rollback_traffic_split(self, agent: str) -> d.Agent:
        with self._tx() as s:  # type: ignore[attr-defined]
            row = self._agent_row(s, agent)
            history = list(row.traffic_history or [])
            if not history:
                raise FailedPrecondition(
                    f"agent {agent!r} has no earlier traffic split to roll back to; set one: harness traffic set {agent} v1=100"
                )
            row.traffic = history.pop()
            row.traffic_history = history
            return self._bump(s, row)
