"""Registry domain: the entities as plain dataclasses, name rules and the agent lifecycle.

Nothing here knows about gRPC or SQL, so the store, the servicer, the seeder and (later) the
CLI and the watch cache share one definition of what is valid.
Enum-like fields hold the short lowercase names used in YAML ("rag", "online", "read");
"" means unspecified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from services.common.errors import InvalidArgument

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

# Lifecycle (common.proto AgentState): the only moves SetAgentState accepts.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "registered": ("online",),
    "online": ("draining",),
    "draining": ("offline",),
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


def check_version_label(value: str) -> str:
    return check_name("version", value, _VERSION)


def check_choice(kind: str, value: str, choices: tuple[str, ...], *, allow_empty: bool = True) -> str:
    if (value == "" and allow_empty) or value in choices:
        return value
    raise InvalidArgument(f"{kind} {value!r} is not valid: use one of {', '.join(choices)}")


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


@dataclass(frozen=True)
class ApiKey:
    id: str
    user: str
    project: str
    description: str = ""
    create_time: datetime | None = None
    expire_time: datetime | None = None
    revoke_time: datetime | None = None


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


@dataclass(frozen=True)
class Model:
    name: str
    triton_model: str = ""
    family: str = ""
    parameters_b: float = 0.0
    quantization: str = ""
    memory_gib: float = 0.0
    context_length: int = 0


@dataclass(frozen=True)
class ToolAction:
    name: str
    risk: str = ""
    idempotent: bool = False
    cache_ttl_s: int = 0
    requires_approval: bool = False


@dataclass(frozen=True)
class Tool:
    name: str
    version: str = ""
    endpoint: str = ""
    description: str = ""
    actions: tuple[ToolAction, ...] = ()


@dataclass(frozen=True)
class PolicyRule:
    ptype: str  # "p" or "g"
    values: tuple[str, ...]

    def csv(self) -> str:
        return ", ".join((self.ptype, *self.values))
