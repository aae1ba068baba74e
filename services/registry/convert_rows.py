"""ORM rows <-> domain dataclasses (the store's only translation layer)."""

from __future__ import annotations

from datetime import UTC, datetime

from services.registry import domain as d
from services.registry.models import (
    AgentRow,
    AgentVersionRow,
    ApiKeyRow,
    JwtSettingsRow,
    ModelRow,
    ProjectRow,
    SecretRow,
    TeamRow,
    ToolRow,
    UserRow,
)


def utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything the store writes is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def team(r: TeamRow) -> d.Team:
    return d.Team(r.name, r.display_name, utc(r.create_time))


def project(r: ProjectRow) -> d.Project:
    return d.Project(r.name, r.team, r.display_name, utc(r.create_time))


def user(r: UserRow) -> d.User:
    return d.User(
        r.name,
        r.display_name,
        r.email,
        r.team or "",
        tuple(r.roles or ()),
        utc(r.create_time),
        rpm_limit=r.rpm_limit or 0,
        tpm_limit=r.tpm_limit or 0,
    )


def api_key(r: ApiKeyRow) -> d.ApiKey:
    return d.ApiKey(
        r.id, r.user, r.project, r.description, utc(r.create_time), utc(r.expire_time), utc(r.revoke_time),
        r.agent or "",
    )  # fmt: skip


def model_row(m: d.Model) -> ModelRow:
    return ModelRow(
        name=m.name,
        triton_model=m.triton_model or m.name,
        family=m.family,
        parameters_b=m.parameters_b,
        quantization=m.quantization,
        memory_gib=m.memory_gib,
        context_length=m.context_length,
        kind=m.kind,
        dimensions=m.dimensions,
    )


def model(r: ModelRow) -> d.Model:
    return d.Model(
        r.name, r.triton_model, r.family, r.parameters_b, r.quantization, r.memory_gib, r.context_length,
        r.kind or "generation", r.dimensions or 0,
    )  # fmt: skip


def tool_row(t: d.Tool) -> ToolRow:
    actions = [
        {
            "name": a.name,
            "risk": a.risk,
            "idempotent": a.idempotent,
            "cache_ttl_s": a.cache_ttl_s,
            "requires_approval": a.requires_approval,
            "description": a.description,
            "input_schema": a.input_schema,
        }
        for a in t.actions
    ]
    return ToolRow(
        name=t.name, version=t.version, endpoint=t.endpoint, description=t.description, actions=actions,
        credential=t.credential, credential_header=t.credential_header,
    )  # fmt: skip


def tool(r: ToolRow) -> d.Tool:
    return d.Tool(
        r.name, r.version, r.endpoint, r.description, tuple(d.ToolAction(**a) for a in r.actions or ()),
        r.credential or "", r.credential_header or "",
    )  # fmt: skip


def secret_info(r: SecretRow) -> d.SecretInfo:
    return d.SecretInfo(r.name, utc(r.update_time), r.updated_by)


def traffic_json(weights: tuple[d.TrafficWeight, ...] | list[d.TrafficWeight]) -> list[dict]:
    return [{"version": w.version, "weight": w.weight} for w in weights]


def version(r: AgentVersionRow) -> d.AgentVersion:
    return d.AgentVersion(
        r.version,
        tuple(r.models or ()),
        tuple(r.tools or ()),
        dict(r.default_sampling or {}),
        dict(r.meta or {}),
        utc(r.create_time),
    )


def agent(r: AgentRow) -> d.Agent:
    return d.Agent(
        name=r.name,
        project=r.project,
        spiffe_id=r.spiffe_id,
        type=r.type,
        description=r.description,
        state=r.state,
        slo=d.SloTargets(**(r.slo or {})),
        pii=tuple(d.PiiRule(**p) for p in r.pii or ()),
        versions=tuple(version(v) for v in r.versions),
        traffic=tuple(d.TrafficWeight(**w) for w in r.traffic or ()),
        rpm_limit=r.rpm_limit,
        tpm_limit=r.tpm_limit,
        revision=r.revision,
        api_key_auth=bool(r.api_key_auth),
    )


def jwt(r: JwtSettingsRow) -> d.JwtSettings:
    return d.JwtSettings(
        r.issuer,
        r.audience,
        r.public_key_pem,
        utc(r.update_time),
        jwks_url=r.jwks_url or "",
        oidc_discovery_url=r.oidc_discovery_url or "",
    )
