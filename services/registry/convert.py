"""Protobuf messages <-> registry domain dataclasses, and paging tokens.

Enums travel as the short lowercase names the domain (and the demo YAML) use:
AGENT_STATE_ONLINE <-> "online"; value 0 (UNSPECIFIED) <-> "".
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2 as pb

from services.common.errors import InvalidArgument
from services.common.limits import page_offset, timestamp
from services.registry import domain as d
from services.registry import limits

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def _prefix(enum_type) -> str:
    # Every Harness enum's value names start with the enum name in UPPER_SNAKE (AgentState -> AGENT_STATE_).
    return enum_type.DESCRIPTOR.values_by_number[0].name.removesuffix("UNSPECIFIED")


def enum_to_short(enum_type, value: int) -> str:
    if value == 0:
        return ""
    try:
        return enum_type.Name(value).removeprefix(_prefix(enum_type)).lower()
    except ValueError as exc:
        raise InvalidArgument(f"{enum_type.DESCRIPTOR.name} value {value} is unknown") from exc


def short_to_enum(enum_type, short: str) -> int:
    if not short:
        return 0
    try:
        return enum_type.Value(_prefix(enum_type) + short.upper())
    except ValueError as exc:
        names = [v.name.removeprefix(_prefix(enum_type)).lower() for v in enum_type.DESCRIPTOR.values[1:]]
        raise InvalidArgument(
            f"{enum_type.DESCRIPTOR.name} {short!r} is unknown: use one of {', '.join(names)}"
        ) from exc


def ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    out = Timestamp()
    out.FromDatetime(value.astimezone(UTC))
    return out


def from_ts(msg, field: str) -> datetime | None:
    return timestamp(field, getattr(msg, field)) if msg.HasField(field) else None


def page_in(page: common_pb2.PageRequest) -> d.Page:
    if page.page_size < 0:
        raise InvalidArgument("page_size must be >= 0 (0 = default of 50)")
    size = min(page.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    # The token is a plain offset: lists are ordered by key, so an offset is stable enough.
    offset = page_offset(page.page_token) if page.page_token else 0
    return d.Page(size, offset)


def page_out(next_offset: int | None) -> common_pb2.PageResponse:
    return common_pb2.PageResponse(next_page_token="" if next_offset is None else str(next_offset))


# --- domain -> proto -----------------------------------------------------------------------


def team_pb(t: d.Team) -> pb.Team:
    return pb.Team(name=t.name, display_name=t.display_name, create_time=ts(t.create_time))


def project_pb(p: d.Project) -> pb.Project:
    return pb.Project(name=p.name, team=p.team, display_name=p.display_name, create_time=ts(p.create_time))


def user_pb(u: d.User) -> pb.User:
    return pb.User(
        name=u.name,
        display_name=u.display_name,
        email=u.email,
        team=u.team,
        roles=list(u.roles),
        create_time=ts(u.create_time),
        rpm_limit=u.rpm_limit,
        tpm_limit=u.tpm_limit,
    )


def api_key_pb(k: d.ApiKey) -> pb.ApiKey:
    return pb.ApiKey(
        id=k.id,
        user=k.user,
        project=k.project,
        description=k.description,
        create_time=ts(k.create_time),
        expire_time=ts(k.expire_time),
        revoke_time=ts(k.revoke_time),
        agent=k.agent,
    )


def version_pb(v: d.AgentVersion) -> pb.AgentVersion:
    out = pb.AgentVersion(
        version=v.version, models=list(v.models), tools=list(v.tools), create_time=ts(v.create_time)
    )
    json_format.ParseDict(v.default_sampling, out.default_sampling)
    out.metadata.update(v.metadata)
    return out


def agent_pb(a: d.Agent) -> pb.Agent:
    return pb.Agent(
        name=a.name,
        spiffe_id=a.spiffe_id,
        type=short_to_enum(common_pb2.AgentType, a.type),
        project=a.project,
        description=a.description,
        state=short_to_enum(common_pb2.AgentState, a.state),
        slo=pb.SloTargets(
            slo_class=short_to_enum(common_pb2.SloClass, a.slo.slo_class),
            ttft_ms=a.slo.ttft_ms,
            tbt_ms=a.slo.tbt_ms,
            e2e_ms=a.slo.e2e_ms,
        ),
        data_policy=pb.DataPolicy(
            pii=[pb.PiiRule(kind=r.kind, mode=short_to_enum(pb.MaskMode, r.mode)) for r in a.pii]
        ),
        versions=[version_pb(v) for v in a.versions],
        traffic=[pb.TrafficWeight(version=w.version, weight=w.weight) for w in a.traffic],
        rpm_limit=a.rpm_limit,
        tpm_limit=a.tpm_limit,
        revision=a.revision,
        api_key_auth=a.api_key_auth,
    )


def model_pb(m: d.Model) -> pb.Model:
    return pb.Model(
        name=m.name,
        triton_model=m.triton_model,
        family=m.family,
        parameters_b=m.parameters_b,
        quantization=m.quantization,
        memory_gib=m.memory_gib,
        context_length=m.context_length,
        kind=short_to_enum(pb.ModelKind, m.kind),
        dimensions=m.dimensions,
    )


def tool_pb(t: d.Tool) -> pb.Tool:
    actions = [
        pb.ToolAction(
            name=a.name,
            risk=short_to_enum(common_pb2.RiskClass, a.risk),
            idempotent=a.idempotent,
            cache_ttl_s=a.cache_ttl_s,
            requires_approval=a.requires_approval,
            description=a.description,
            input_schema=a.input_schema,
        )
        for a in t.actions
    ]
    return pb.Tool(
        name=t.name, version=t.version, endpoint=t.endpoint, description=t.description, actions=actions,
        credential=t.credential, credential_header=t.credential_header,
    )  # fmt: skip


def secret_pb(s: d.SecretInfo) -> pb.SecretInfo:
    out = pb.SecretInfo(name=s.name, updated_by=s.updated_by)
    if s.update_time is not None:
        out.update_time.FromDatetime(s.update_time)
    return out


def rule_pb(r: d.PolicyRule) -> pb.PolicyRule:
    return pb.PolicyRule(ptype=r.ptype, values=list(r.values))


def jwt_pb(j: d.JwtSettings) -> pb.JwtSettings:
    return pb.JwtSettings(
        issuer=j.issuer,
        audience=j.audience,
        public_key_pem=j.public_key_pem,
        update_time=ts(j.update_time),
        jwks_url=j.jwks_url,
        oidc_discovery_url=j.oidc_discovery_url,
    )


# Change-log kind -> (EntityKind, Change oneof field, converter).
_ENTITIES = {
    "team": (pb.ENTITY_KIND_TEAM, "team", team_pb),
    "project": (pb.ENTITY_KIND_PROJECT, "project", project_pb),
    "user": (pb.ENTITY_KIND_USER, "user", user_pb),
    "api_key": (pb.ENTITY_KIND_API_KEY, "api_key", api_key_pb),
    "agent": (pb.ENTITY_KIND_AGENT, "agent", agent_pb),
    "model": (pb.ENTITY_KIND_MODEL, "model", model_pb),
    "tool": (pb.ENTITY_KIND_TOOL, "tool", tool_pb),
    "policy": (pb.ENTITY_KIND_POLICY, "policy", rule_pb),
    "jwt": (pb.ENTITY_KIND_JWT_SETTINGS, "jwt_settings", jwt_pb),
    "secret": (pb.ENTITY_KIND_SECRET, "secret", secret_pb),
}


def change_pb(ch: d.Change) -> pb.Change:
    kind, field_name, conv = _ENTITIES[ch.kind]
    out = pb.Change(revision=ch.revision, kind=kind, key=ch.key, deleted=ch.deleted)
    if ch.entity is not None:
        getattr(out, field_name).CopyFrom(conv(ch.entity))
    return out


def change_size(ch: d.Change) -> int:
    """Bytes the change takes in a Watch message."""
    return change_pb(ch).ByteSize()


def watch_pb(b: d.WatchBatch) -> pb.WatchResponse:
    return pb.WatchResponse(
        snapshot=b.snapshot, changes=[change_pb(ch) for ch in b.changes], revision=b.revision, more=b.more
    )


# --- proto -> domain -----------------------------------------------------------------------


def team_in(m: pb.Team) -> d.Team:
    return d.Team(m.name, m.display_name)


def project_in(m: pb.Project) -> d.Project:
    return d.Project(m.name, m.team, m.display_name)


def user_in(m: pb.User) -> d.User:
    return d.User(
        m.name, m.display_name, m.email, m.team, tuple(m.roles), rpm_limit=m.rpm_limit, tpm_limit=m.tpm_limit
    )


def agent_in(m: pb.Agent) -> d.Agent:
    """The agent's own fields; state, versions, traffic and revision are the registry's."""
    return d.Agent(
        name=m.name,
        project=m.project,
        spiffe_id=m.spiffe_id,
        type=enum_to_short(common_pb2.AgentType, m.type),
        description=m.description,
        slo=d.SloTargets(
            enum_to_short(common_pb2.SloClass, m.slo.slo_class), m.slo.ttft_ms, m.slo.tbt_ms, m.slo.e2e_ms
        ),
        pii=tuple(d.PiiRule(r.kind, enum_to_short(pb.MaskMode, r.mode)) for r in m.data_policy.pii),
        rpm_limit=m.rpm_limit,
        tpm_limit=m.tpm_limit,
    )


def version_in(m: pb.AgentVersion) -> d.AgentVersion:
    limits.check_version_message(m.metadata, m.default_sampling)
    return d.AgentVersion(
        m.version,
        tuple(m.models),
        tuple(m.tools),
        json_format.MessageToDict(m.default_sampling, preserving_proto_field_name=True),
        json_format.MessageToDict(m.metadata),
    )


def model_in(m: pb.Model) -> d.Model:
    kind = enum_to_short(pb.ModelKind, m.kind) or "generation"
    return d.Model(
        m.name, m.triton_model, m.family, m.parameters_b, m.quantization, m.memory_gib, m.context_length,
        kind, m.dimensions,
    )  # fmt: skip


def tool_in(m: pb.Tool) -> d.Tool:
    actions = tuple(
        d.ToolAction(
            a.name,
            enum_to_short(common_pb2.RiskClass, a.risk),
            a.idempotent,
            a.cache_ttl_s,
            a.requires_approval,
            a.description,
            a.input_schema,
        )
        for a in m.actions
    )
    return d.Tool(m.name, m.version, m.endpoint, m.description, actions, m.credential, m.credential_header)


def rule_in(m: pb.PolicyRule) -> d.PolicyRule:
    return d.PolicyRule(m.ptype, tuple(m.values))


def jwt_in(m: pb.JwtSettings) -> d.JwtSettings:
    return d.JwtSettings(
        m.issuer, m.audience, m.public_key_pem, jwks_url=m.jwks_url, oidc_discovery_url=m.oidc_discovery_url
    )
