"""The registry's contract limits (registry.proto documents the same numbers).

Every string has a length limit (the column widths, so SQLite and PostgreSQL agree), every
repeated field a count limit and every number a finite range. They also keep each entity far
smaller than one Watch message, so one oversized write can never stall the routers that copy
the registry.
"""

from __future__ import annotations

import json
import math
import re

import jsonschema
from harness.common.v1 import common_pb2

from services.common.errors import InvalidArgument
from services.common.limits import check_count, check_length, check_range, check_stop_strings, check_struct
from services.registry import domain as d

DISPLAY_NAME_CHARS = 255
EMAIL_CHARS = 255
ROLE_CHARS = 64
MAX_ROLES = 32
API_KEY_DESCRIPTION_CHARS = 255
AGENT_DESCRIPTION_CHARS = 1024
PII_KIND_CHARS = 64
MAX_PII_RULES = 32
MAX_RATE_LIMIT = 10**12  # requests or tokens per minute
MAX_SLO_TARGET_MS = 86_400_000.0  # one day
MAX_VERSIONS = 100  # per agent
MAX_VERSION_MODELS = 16
MAX_VERSION_TOOLS = 64
MAX_STOP_SEQUENCES = 16
STOP_SEQUENCE_CHARS = 256
METADATA_BYTES = 16 * 1024
MAX_TRAFFIC_WEIGHTS = MAX_VERSIONS
TRITON_MODEL_CHARS = 255
FAMILY_CHARS = 64
QUANTIZATION_CHARS = 32
MAX_PARAMETERS_B = 100_000.0
MAX_MEMORY_GIB = 4096.0
MAX_EMBEDDING_DIMENSIONS = 65_536
MODEL_KINDS = ("generation", "embedding")
MAX_CONTEXT_LENGTH = 10_000_000
TOOL_ENDPOINT_CHARS = 1024
TOOL_DESCRIPTION_CHARS = 1024
MAX_TOOL_ACTIONS = 64
ACTION_NAME_CHARS = 64
MAX_CACHE_TTL_S = 7 * 24 * 3600
ACTION_DESCRIPTION_CHARS = 1024
INPUT_SCHEMA_CHARS = 64 * 1024
CREDENTIAL_HEADER_CHARS = 64
SECRET_VALUE_CHARS = 8192
_HEADER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")  # an HTTP header name, lowercase
_FORBIDDEN_HEADERS = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection"})
POLICY_VALUE_CHARS = 96  # five of them still fit the change log's 512-character key
JWT_FIELD_CHARS = 255
JWT_URL_CHARS = 2048
JWT_KEY_CHARS = 16 * 1024
JWT_URL_CHARS = 2048
QUERY_CHARS = 256  # names and filters in reads (CheckAccess, Get*, List* filters)


def check_team(team: d.Team) -> None:
    check_length("team display_name", team.display_name, DISPLAY_NAME_CHARS)


def check_project(project: d.Project) -> None:
    check_length("project display_name", project.display_name, DISPLAY_NAME_CHARS)


def check_user(user: d.User) -> None:
    check_length("user display_name", user.display_name, DISPLAY_NAME_CHARS)
    check_length("user email", user.email, EMAIL_CHARS)
    check_count("user roles", user.roles, MAX_ROLES)
    for role in user.roles:
        if not role:
            raise InvalidArgument("user roles must not be empty strings")
        check_length("user role", role, ROLE_CHARS)
    check_rate_limits(f"user {user.name!r}", user.rpm_limit, user.tpm_limit)


def check_rate_limits(owner: str, rpm_limit: int, tpm_limit: int) -> None:
    for name, value in (("rpm_limit", rpm_limit), ("tpm_limit", tpm_limit)):
        check_range(f"{name} of {owner}", value, 0, MAX_RATE_LIMIT)


def check_agent(agent: d.Agent) -> None:
    check_length("agent description", agent.description, AGENT_DESCRIPTION_CHARS)
    check_length("agent spiffe_id", agent.spiffe_id, 255)
    for target in ("ttft_ms", "tbt_ms", "e2e_ms"):
        check_range(f"slo.{target}", getattr(agent.slo, target), 0, MAX_SLO_TARGET_MS)
    check_rate_limits(f"agent {agent.name!r}", agent.rpm_limit, agent.tpm_limit)
    check_count("data_policy.pii", agent.pii, MAX_PII_RULES)
    for rule in agent.pii:
        check_length("PII rule kind", rule.kind, PII_KIND_CHARS)


def check_version(version: d.AgentVersion) -> None:
    check_count("version models", version.models, MAX_VERSION_MODELS)
    check_count("version tools", version.tools, MAX_VERSION_TOOLS)
    for ref in (*version.models, *version.tools):
        check_length("model or tool reference", ref, 128 + 1 + 64)


def check_version_message(metadata, sampling: common_pb2.SamplingParams) -> None:
    """What must be checked on the messages themselves, before they become JSON."""
    check_struct("version metadata", metadata, max_bytes=METADATA_BYTES)
    # The router refuses such stop strings on a request; defaults it would refuse are refused here.
    check_stop_strings("default_sampling.stop", sampling.stop, MAX_STOP_SEQUENCES, STOP_SEQUENCE_CHARS)
    for field in ("temperature", "top_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
        value = getattr(sampling, field)
        if not math.isfinite(value):
            raise InvalidArgument(f"default_sampling.{field} must be a finite number, got {value}")
    for field in ("max_tokens", "min_tokens", "top_k"):
        check_range(f"default_sampling.{field}", getattr(sampling, field), 0, MAX_CONTEXT_LENGTH)


def check_model(model: d.Model) -> None:
    check_length("model triton_model", model.triton_model, TRITON_MODEL_CHARS)
    check_length("model family", model.family, FAMILY_CHARS)
    check_length("model quantization", model.quantization, QUANTIZATION_CHARS)
    check_range("model parameters_b", model.parameters_b, 0, MAX_PARAMETERS_B)
    check_range("model memory_gib", model.memory_gib, 0, MAX_MEMORY_GIB)
    check_range("model context_length", model.context_length, 0, MAX_CONTEXT_LENGTH)
    check_range("model dimensions", model.dimensions, 0, MAX_EMBEDDING_DIMENSIONS)
    if model.kind not in MODEL_KINDS:
        raise InvalidArgument(f"model kind {model.kind!r} is unknown: use one of {', '.join(MODEL_KINDS)}")
    if model.dimensions and model.kind != "embedding":
        raise InvalidArgument(
            "model dimensions are for embedding models; set kind to embedding or leave them 0"
        )


def check_tool(tool: d.Tool) -> None:
    check_length("tool endpoint", tool.endpoint, TOOL_ENDPOINT_CHARS)
    check_length("tool description", tool.description, TOOL_DESCRIPTION_CHARS)
    check_count("tool actions", tool.actions, MAX_TOOL_ACTIONS)
    for action in tool.actions:
        check_length("tool action name", action.name, ACTION_NAME_CHARS)
        check_range(f"cache_ttl_s of action {action.name!r}", action.cache_ttl_s, 0, MAX_CACHE_TTL_S)
        check_length(f"description of action {action.name!r}", action.description, ACTION_DESCRIPTION_CHARS)
        check_input_schema(action.name, action.input_schema)
    if tool.credential:
        d.check_label("credential secret", tool.credential)
    check_length("tool credential_header", tool.credential_header, CREDENTIAL_HEADER_CHARS)
    header = tool.credential_header
    if header and (not _HEADER_NAME.match(header) or header in _FORBIDDEN_HEADERS):
        raise InvalidArgument(
            f"credential_header {header!r} must be a lowercase HTTP header name other than "
            f"{', '.join(sorted(_FORBIDDEN_HEADERS))} (default: authorization)"
        )
    if header and not tool.credential:
        raise InvalidArgument("credential_header needs a credential (the secret whose value it carries)")


def check_input_schema(action: str, text: str) -> None:
    """An action's input schema: a JSON object that is a valid JSON Schema (its declared draft,
    else 2020-12) describing an object, so MCP clients can show it as the tool's arguments."""
    if not text:
        return
    check_length(f"input_schema of action {action!r}", text, INPUT_SCHEMA_CHARS)
    try:
        schema = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past Python's stack
        raise InvalidArgument(f"input_schema of action {action!r} is not JSON: {str(exc)[:200]}") from None
    if not isinstance(schema, dict):
        raise InvalidArgument(f"input_schema of action {action!r} must be a JSON object (a JSON Schema)")
    if schema.get("type", "object") != "object":
        raise InvalidArgument(
            f'input_schema of action {action!r} must describe an object ("type": "object"): '
            "a tool's arguments are named"
        )
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(
            schema
        )
    except RecursionError:
        raise InvalidArgument(f"input_schema of action {action!r} is nested too deeply") from None
    except jsonschema.SchemaError as exc:
        raise InvalidArgument(
            f"input_schema of action {action!r} is not a valid JSON Schema: {exc.message[:300]}"
        ) from None


def check_secret_value(name: str, value: str) -> None:
    if not value:
        raise InvalidArgument(f"secret {name!r} needs a value")
    check_length(f"secret {name!r}", value, SECRET_VALUE_CHARS)
    if not value.isascii() or not value.isprintable():
        raise InvalidArgument(
            f"secret {name!r} must be printable ASCII (it is sent in an HTTP header); no newlines"
        )


def check_policy_values(values: tuple[str, ...]) -> None:
    check_count("policy rule values", values, 5)
    for value in values:
        check_length("policy value", value, POLICY_VALUE_CHARS)


def check_jwt(settings: d.JwtSettings) -> None:
    check_length("jwt issuer", settings.issuer, JWT_FIELD_CHARS)
    check_length("jwt audience", settings.audience, JWT_FIELD_CHARS)
    check_length("jwt public_key_pem", settings.public_key_pem, JWT_KEY_CHARS)
    check_length("jwt jwks_url", settings.jwks_url, JWT_URL_CHARS)
    check_length("jwt oidc_discovery_url", settings.oidc_discovery_url, JWT_URL_CHARS)
    check_length("jwt jwks_url", settings.jwks_url, JWT_URL_CHARS)
    check_length("jwt oidc_discovery_url", settings.oidc_discovery_url, JWT_URL_CHARS)


def check_query(**fields: str) -> None:
    """Names and filters given to reads."""
    for name, value in fields.items():
        check_length(name, value, QUERY_CHARS)
