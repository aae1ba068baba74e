"""Applies the `registry:` part of a demo YAML through the registry's gRPC API.

Going through the API (not the database) means the seed obeys the same validation and access
rules as any admin, and works against a remote registry. Rerunning is safe: ALREADY_EXISTS
counts as "already there", policies report added=False, and agent states are reached by
walking legal lifecycle moves from wherever the agent is now.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

import grpc
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2 as pb

from services.registry import domain as d
from services.registry.convert import enum_to_short, short_to_enum

log = logging.getLogger("harness.registry.seed")

SECTIONS = ("teams", "projects", "users", "models", "tools", "agents", "policies")


@dataclass
class SeedReport:
    created: int = 0  # entities, versions, rules and state moves applied now
    existing: int = 0  # already present (a rerun)


async def _create(report: SeedReport, call: Awaitable, what: str) -> bool:
    """Awaits a create call; True if it created, False if it already existed."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise RuntimeError(f"seeding {what} failed: {exc.code().name}: {exc.details()}") from exc
        report.existing += 1
        return False
    report.created += 1
    return True


def _agent_pb(a: dict) -> pb.Agent:
    slo = a.get("slo") or {}
    return pb.Agent(
        name=a["name"],
        spiffe_id=a.get("spiffe_id", ""),
        type=short_to_enum(common_pb2.AgentType, a.get("type", "")),
        project=a["project"],
        description=a.get("description", ""),
        slo=pb.SloTargets(
            slo_class=short_to_enum(common_pb2.SloClass, slo.get("slo_class", "")),
            ttft_ms=slo.get("ttft_ms", 0),
            tbt_ms=slo.get("tbt_ms", 0),
            e2e_ms=slo.get("e2e_ms", 0),
        ),
        data_policy=pb.DataPolicy(
            pii=[
                pb.PiiRule(kind=p["kind"], mode=short_to_enum(pb.MaskMode, p.get("mode", "")))
                for p in (a.get("data_policy") or {}).get("pii", [])
            ]
        ),
        rpm_limit=a.get("rpm_limit", 0),
        tpm_limit=a.get("tpm_limit", 0),
    )


def _tool_pb(t: dict) -> pb.Tool:
    actions = [
        pb.ToolAction(
            name=x["name"],
            risk=short_to_enum(common_pb2.RiskClass, x.get("risk", "")),
            idempotent=bool(x.get("idempotent", False)),
            cache_ttl_s=int(x.get("cache_ttl_s", 0)),
            requires_approval=bool(x.get("requires_approval", False)),
            description=x.get("description", ""),
            input_schema=_schema_text(x.get("input_schema")),
        )
        for x in t.get("actions", [])
    ]
    return pb.Tool(
        name=t["name"],
        version=str(t.get("version", "")),
        endpoint=t.get("endpoint", ""),
        description=t.get("description", ""),
        actions=actions,
        credential=t.get("credential", ""),
        credential_header=t.get("credential_header", ""),
    )


def _schema_text(schema) -> str:
    """An action's input schema as the catalog keeps it: JSON text (YAML may write it as a mapping)."""
    if not schema:
        return ""
    return schema if isinstance(schema, str) else json.dumps(schema, separators=(",", ":"))


async def _seed_agent(stub, a: dict, md, report: SeedReport) -> None:
    name = a["name"]
    await _create(
        report, stub.CreateAgent(pb.CreateAgentRequest(agent=_agent_pb(a)), metadata=md), f"agent {name}"
    )
    for v in a.get("versions", []):
        version = pb.AgentVersion(
            version=str(v["version"]), models=v.get("models", []), tools=v.get("tools", [])
        )
        if v.get("metadata"):
            version.metadata.update(v["metadata"])
        req = pb.CreateAgentVersionRequest(agent=name, version=version)
        await _create(
            report, stub.CreateAgentVersion(req, metadata=md), f"agent {name} version {v['version']}"
        )
    current = (await stub.GetAgent(pb.GetAgentRequest(name=name), metadata=md)).agent
    if a.get("traffic"):
        weights = [pb.TrafficWeight(version=str(w["version"]), weight=int(w["weight"])) for w in a["traffic"]]
        if list(current.traffic) != weights:
            await stub.SetTrafficSplit(pb.SetTrafficSplitRequest(agent=name, traffic=weights), metadata=md)
            report.created += 1
    target = a.get("state", "")
    if target:
        for step in d.state_path(enum_to_short(common_pb2.AgentState, current.state), target):
            req = pb.SetAgentStateRequest(agent=name, state=short_to_enum(common_pb2.AgentState, step))
            await stub.SetAgentState(req, metadata=md)
            report.created += 1


async def seed_registry(stub, data: dict, metadata: Sequence[tuple[str, str]] | None = None) -> SeedReport:
    """Applies `data` (the demo YAML as a dict, or just its `registry:` section) via `stub`.

    `stub` is a `RegistryStub`; `metadata` must identify an admin or a Harness service.
    Raises ValueError for an unknown section and RuntimeError naming the entity that failed.
    """
    section = data.get("registry", data) or {}
    unknown = set(section) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown registry seed sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    md = tuple(metadata or ())
    report = SeedReport()
    for t in section.get("teams", []):
        team = pb.Team(name=t["name"], display_name=t.get("display_name", ""))
        await _create(
            report, stub.CreateTeam(pb.CreateTeamRequest(team=team), metadata=md), f"team {t['name']}"
        )
    for p in section.get("projects", []):
        project = pb.Project(name=p["name"], team=p["team"], display_name=p.get("display_name", ""))
        req = pb.CreateProjectRequest(project=project)
        await _create(report, stub.CreateProject(req, metadata=md), f"project {p['name']}")
    for u in section.get("users", []):
        user = pb.User(
            name=u["name"],
            display_name=u.get("display_name", ""),
            email=u.get("email", ""),
            team=u.get("team", ""),
            roles=u.get("roles", []),
            rpm_limit=u.get("rpm_limit", 0),
            tpm_limit=u.get("tpm_limit", 0),
        )
        await _create(
            report, stub.CreateUser(pb.CreateUserRequest(user=user), metadata=md), f"user {u['name']}"
        )
    for m in section.get("models", []):
        fields = {k: v for k, v in m.items() if k in pb.Model.DESCRIPTOR.fields_by_name}
        if isinstance(fields.get("kind"), str):  # `kind: embedding` in the file
            fields["kind"] = pb.ModelKind.Value("MODEL_KIND_" + fields["kind"].upper())
        model = pb.Model(**fields)
        req = pb.RegisterModelRequest(model=model)
        await _create(report, stub.RegisterModel(req, metadata=md), f"model {m['name']}")
    for t in section.get("tools", []):
        req = pb.RegisterToolRequest(tool=_tool_pb(t))
        await _create(report, stub.RegisterTool(req, metadata=md), f"tool {t['name']}")
    for a in section.get("agents", []):
        await _seed_agent(stub, a, md, report)
    for rule in section.get("policies", []):
        ptype, *values = (str(v) for v in rule)
        resp = await stub.AddPolicy(
            pb.AddPolicyRequest(rule=pb.PolicyRule(ptype=ptype, values=values)), metadata=md
        )
        if resp.added:
            report.created += 1
        else:
            report.existing += 1
    log.info("registry seed: %d applied, %d already present", report.created, report.existing)
    return report
