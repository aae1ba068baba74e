"""Registry domain: the entities as plain dataclasses, name rules and the agent lifecycle.

Nothing here knows about gRPC or SQL, so the store, the servicer, the seeder, the CLI and the
watch stream share one definition of what is valid.
Enum-like fields hold the short lowercase names used in YAML ("rag", "online", "read");
"" means unspecified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from services.common.errors import InvalidArgument
from services.common.jwks import check_url

# DNS-label style: these names end up in SPIFFE ids, casbin domains and metric labels.
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Catalog names may carry dots and underscores ("qwen2.5-7b", "llama_3").
_CATALOG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
# Users are JWT subjects: allow the characters identity providers commonly use.
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

AGENT_TYPES = ("rag", "multimodal", "rpa", "realtime_risk", "code", "custom")
AGENT_STATES = ("registered", "online", "draining", "offline", "retired")
SLO_CLASSES = ("realtime", "interactive", "batch")
RISK_CLASSES = ("read", "write", "delete")
MASK_MODES = ("mask", "hash", "drop")
# Kinds of entity in the change log (changes.kind) and the watch stream.
CHANGE_KINDS = ("team", "project", "user", "api_key", "agent", "model", "tool", "policy", "jwt", "secret")

# Lifecycle (common.proto AgentState): the only moves SetAgentState accepts.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "registered": ("online",),
    "online": ("draining",),
    # Draining back to online is how an operator cancels a drain (or ends a pause).
    "draining": ("online", "offline"),
    "offline": ("online", "retired"),
    "retired": (),
}


def now() -> datetime:
    return datetime.now(UTC)


def check_name(kind: str, value: str, pattern: re.Pattern[str] = _LABEL) -> str:
    """Returns `value` or raises InvalidArgument saying what a valid name looks like."""
    if not value:
        raise InvalidArgument(f"{kind} name is required")
    if not pattern.match(value):
        rule = {
            _LABEL: "lowercase letters, digits and dashes, 1-63 chars, starting and ending "
            "with a letter or digit",
            _CATALOG: "lowercase letters, digits, '.', '_' and '-', starting with a letter or digit",
            _USER: "letters, digits and . _ @ + -, starting with a letter or digit",
            _VERSION: "letters, digits, '.', '_' and '-', at most 64 chars",
        }[pattern]
        raise InvalidArgument(f"{kind} name {value!r} is invalid: use {rule}")
    return value


def check_label(kind: str, value: str) -> str:
    return check_name(kind, value, _LABEL)


def check_catalog_name(kind: str, value: str) -> str:
    return check_name(kind, value, _CATALOG)


def check_user_name(value: str) -> str:
    return check_name("user", value, _USER)


def check_rate_limits(owner: str, rpm_limit: int, tpm_limit: int) -> None:
    """Requests/tokens per minute: 0 = unlimited, negative is malformed."""
    for name, value in (("rpm_limit", rpm_limit), ("tpm_limit", tpm_limit)):
        if value < 0:
            raise InvalidArgument(f"{name} of {owner} must be >= 0 (0 = unlimited), got {value}")


def check_version_label(value: str, kind: str = "version") -> str:
    return check_name(kind, value, _VERSION)


def check_choice(kind: str, value: str, choices: tuple[str, ...], *, allow_empty: bool = True) -> str:
    if (value == "" and allow_empty) or value in choices:
        return value
    raise InvalidArgument(f"{kind} {value!r} is not valid: use one of {', '.join(choices)}")


def check_required(field_name: str, value: str) -> str:
    """A reference that must be given (the referenced entity's existence is the store's check)."""
    if not value:
        raise InvalidArgument(f"{field_name} is required")
    return value


def check_agent_spiffe_id(value: str, trust_domain: str, agent: str) -> str:
    """The SPIFFE id an agent's certificate must carry; `value` may be empty (then derived)."""
    expected = f"spiffe://{trust_domain}/agent/{agent}"
    if not value:
        return expected
    domain, _, path = value.removeprefix("spiffe://").partition("/")
    if not value.startswith("spiffe://") or not domain or not path or any(c.isspace() for c in value):
        raise InvalidArgument(
            f"spiffe_id {value!r} is not a SPIFFE id: use spiffe://<trust-domain>/agent/<name> "
            f"(here {expected!r}), or leave it empty"
        )
    if value != expected:
        raise InvalidArgument(
            f"spiffe_id {value!r} does not match the agent: its certificate must carry "
            f"{expected!r} (leave spiffe_id empty to use it)"
        )
    return value


def check_jwt_settings(
    issuer: str, audience: str, public_key_pem: str, jwks_url: str = "", oidc_discovery_url: str = ""
) -> None:
    """Services verify tokens with these settings: exactly one key source, each usable."""
    check_required("jwt issuer", issuer.strip())
    check_required("jwt audience", audience.strip())
    sources = [name for name, value in (("public_key_pem", public_key_pem.strip()), ("jwks_url", jwks_url),
                                        ("oidc_discovery_url", oidc_discovery_url)) if value]  # fmt: skip
    if len(sources) != 1:
        raise InvalidArgument(
            "jwt settings need exactly one of public_key_pem, jwks_url and oidc_discovery_url"
            + (f"; got {', '.join(sources)}" if sources else "")
        )
    for name, url in (("jwks_url", jwks_url), ("oidc_discovery_url", oidc_discovery_url)):
        if url:
            try:
                check_url(url, f"jwt {name}")
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from exc
    if not public_key_pem.strip():
        return
    try:
        key = serialization.load_pem_public_key(public_key_pem.encode())
    except ValueError as exc:
        raise InvalidArgument(
            "jwt public_key_pem is not a PEM public key (-----BEGIN PUBLIC KEY-----...)"
        ) from exc
    if not isinstance(key, RSAPublicKey):
        raise InvalidArgument("jwt public_key_pem must be an RSA key: user tokens are RS256")


def legal_next_states(state: str) -> tuple[str, ...]:
    return TRANSITIONS.get(state, ())


def state_path(current: str, target: str) -> list[str]:
    """Shortest sequence of legal moves from `current` to `target` (empty if already there).

    Used by the seeder (and later the CLI) to reach a target state without knowing the graph.
    """
    if current == target:
        return []
    frontier, seen = [[current]], {current}
    while frontier:
        path = frontier.pop(0)
        for nxt in TRANSITIONS.get(path[-1], ()):
            if nxt == target:
                return [*path[1:], nxt]
            if nxt not in seen:
                seen.add(nxt)
                frontier.append([*path, nxt])
    raise InvalidArgument(f"agent state {target!r} cannot be reached from {current!r}")


@dataclass(frozen=True)
class Page:
    """A window of a list: `offset` items skipped, at most `size` returned."""

    size: int = 50
    offset: int = 0


@dataclass(frozen=True)
class Team:
    name: str
    display_name: str = ""
    create_time: datetime | None = None


@dataclass(frozen=True)
class Project:
    name: str
    team: str
    display_name: str = ""
    create_time: datetime | None = None


@dataclass(frozen=True)
class User:
    name: str
    display_name: str = ""
    email: str = ""
    team: str = ""
    roles: tuple[str, ...] = ()
    create_time: datetime | None = None
    rpm_limit: int = 0
    tpm_limit: int = 0


@dataclass(frozen=True)
class ApiKey:
    id: str
    user: str
    project: str
    description: str = ""
    create_time: datetime | None = None
    expire_time: datetime | None = None
    revoke_time: datetime | None = None
    agent: str = ""  # bound to this agent ("" = not bound)


@dataclass(frozen=True)
class SloTargets:
    slo_class: str = ""
    ttft_ms: float = 0.0
    tbt_ms: float = 0.0
    e2e_ms: float = 0.0


@dataclass(frozen=True)
class PiiRule:
    kind: str
    mode: str = ""  # "" = mask


@dataclass(frozen=True)
class AgentVersion:
    version: str
    models: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    # SamplingParams and free metadata as JSON-able dicts (the store keeps them as JSON).
    default_sampling: dict = field(default_factory=dict, hash=False)
    metadata: dict = field(default_factory=dict, hash=False)
    create_time: datetime | None = None


@dataclass(frozen=True)
class TrafficWeight:
    version: str
    weight: int


@dataclass(frozen=True)
class Agent:
    name: str
    project: str
    spiffe_id: str = ""
    type: str = ""
    description: str = ""
    state: str = ""
    slo: SloTargets = field(default_factory=SloTargets)
    pii: tuple[PiiRule, ...] = ()
    versions: tuple[AgentVersion, ...] = ()
    traffic: tuple[TrafficWeight, ...] = ()
    rpm_limit: int = 0
    tpm_limit: int = 0
    revision: int = 0
    api_key_auth: bool = False  # agent-bound API keys may stand in for its certificate


@dataclass(frozen=True)
class Model:
    name: str
    triton_model: str = ""
    family: str = ""
    parameters_b: float = 0.0
    quantization: str = ""
    memory_gib: float = 0.0
    context_length: int = 0
    kind: str = "generation"  # or "embedding" (MODEL_KIND_* without the prefix, lower case)
    dimensions: int = 0  # an embedding model's vector length


@dataclass(frozen=True)
class ToolAction:
    name: str
    risk: str = ""
    idempotent: bool = False
    cache_ttl_s: int = 0
    requires_approval: bool = False
    description: str = ""
    input_schema: str = ""  # JSON Schema text; "" = any object


@dataclass(frozen=True)
class Tool:
    name: str
    version: str = ""
    endpoint: str = ""
    description: str = ""
    actions: tuple[ToolAction, ...] = ()
    credential: str = ""  # the name of a secret, never its value
    credential_header: str = ""


@dataclass(frozen=True)
class SecretInfo:
    """A stored secret without its value (the value never leaves the store but to a router)."""

    name: str
    update_time: datetime | None = None
    updated_by: str = ""


@dataclass(frozen=True)
class PolicyRule:
    ptype: str  # "p" or "g"
    values: tuple[str, ...]

    def csv(self) -> str:
        return ", ".join((self.ptype, *self.values))


@dataclass(frozen=True)
class JwtSettings:
    """How user tokens (JWT) are verified: expected issuer and audience, and exactly one key
    source: an RSA public key (RS256), a JWKS URL, or an OIDC discovery URL."""

    issuer: str
    audience: str
    public_key_pem: str
    update_time: datetime | None = None
    jwks_url: str = ""
    oidc_discovery_url: str = ""


Entity = Team | Project | User | ApiKey | Agent | Model | Tool | PolicyRule | JwtSettings


@dataclass(frozen=True)
class Change:
    """One change-log entry with the entity it touched (None when deleted).

    `kind` is one of CHANGE_KINDS; `key` names the entity (name, "tool@version", the rule CSV,
    "jwt"). In a snapshot every entity comes as a Change carrying the snapshot's revision.
    """

    revision: int
    kind: str
    key: str
    deleted: bool = False
    entity: Entity | None = None


@dataclass(frozen=True)
class WatchBatch:
    """One Watch message before conversion: a snapshot part or a run of deltas.

    `more` says further messages follow at once to complete the snapshot (or the catch-up);
    the client holds `revision` once it has applied a message with `more` False.
    """

    snapshot: bool
    changes: tuple[Change, ...]
    revision: int
    more: bool = False


def parse_rule_csv(csv: str) -> PolicyRule:
    """Inverse of PolicyRule.csv(); rule values never hold commas or spaces (see policy.py)."""
    ptype, *values = csv.split(", ")
    return PolicyRule(ptype, tuple(values))
