"""Per-request context (request id, trace, identity) carried in contextvars.

The server interceptor fills these from metadata before a handler runs, so core code reads
`current()` instead of threading a context object through every call.
"""

from __future__ import annotations

import contextvars
import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from services.common.errors import InvalidArgument
from services.common.limits import check_length

REQUEST_ID_KEY = "x-request-id"
TRACEPARENT_KEY = "traceparent"
SESSION_KEY = "x-harness-session-id"
STEP_KEY = "x-harness-step-id"

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
MAX_REQUEST_ID_CHARS = 128  # a caller's longer id is cut to this
MAX_LINEAGE_ID_CHARS = 256  # a longer session or step id is refused


BOUND_AGENT = "bound_agent"  # Identity.claims: the agent an API key is bound to ("" = none)
AGENT_BY_KEY = "agent_by_key"  # Identity.claims: the agent was named by its bound API key, not a cert


@dataclass(frozen=True)
class Identity:
    """Who is calling, as established from the connection and credentials (never from the body)."""

    agent: str = ""  # agent name from the SPIFFE URI forwarded by Envoy
    agent_spiffe_id: str = ""
    service: str = ""  # a Harness service calling directly with its own cert
    user: str = ""  # JWT subject or API-key owner
    auth_method: str = ""  # "jwt", "api_key" or ""
    roles: tuple[str, ...] = ()
    project: str = ""  # API keys are scoped to one project
    claims: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


@dataclass(frozen=True)
class RequestContext:
    request_id: str
    trace_id: str
    span_id: str
    session_id: str = ""
    step_id: str = ""
    identity: Identity = field(default_factory=Identity)
    # Which protocol the call came in by ("grpc", "triton", "openai"): metrics and audit say so.
    frontdoor: str = "grpc"

    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-01"


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "harness_request_context", default=None
)


def new_context(identity: Identity | None = None) -> RequestContext:
    return RequestContext(
        request_id=str(uuid.uuid4()),
        trace_id=secrets.token_hex(16),
        span_id=secrets.token_hex(8),
        identity=identity or Identity(),
    )


def context_from_metadata(
    metadata: Iterable[tuple[str, str | bytes]], frontdoor: str = "grpc"
) -> RequestContext:
    """Builds the context from incoming metadata (or HTTP headers, lower-case names); missing or
    malformed ids are generated. A request id is echoed in response headers and written in logs
    and records: one holding anything but visible ASCII (a tab, a space, Latin-1 an HTTP header
    may carry) is replaced, as a missing one is. Session and step ids are the caller's own
    lineage: every door refuses a bad one (refuse_bad_lineage), and one that reached here anyway
    is left out, never written."""
    md = {k: v for k, v in metadata if isinstance(v, str)}
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    match = _TRACEPARENT.match(md.get(TRACEPARENT_KEY, ""))
    if match:
        trace_id = match.group(1)  # keep the caller's trace; this hop gets a new span
    request_id = md.get(REQUEST_ID_KEY, "")[:MAX_REQUEST_ID_CHARS]
    if not _is_visible_ascii(request_id):
        request_id = str(uuid.uuid4())
    return RequestContext(
        request_id=request_id,
        trace_id=trace_id,
        span_id=span_id,
        session_id=_lineage_id(md.get(SESSION_KEY, "")),
        step_id=_lineage_id(md.get(STEP_KEY, "")),
        frontdoor=frontdoor,
    )


def refuse_bad_lineage(metadata: Iterable[tuple[str, str | bytes]]) -> None:
    """InvalidArgument when an x-harness-session-id or x-harness-step-id header (lower-case
    names) is not a lineage id check_lineage_id accepts. Refused, not replaced as a bad request id
    is: these ids tie a caller's calls together in audit and usage records, and dropping one
    silently would hide the caller's bug until someone looks for the lineage."""
    for name, value in metadata:
        if name in (SESSION_KEY, STEP_KEY) and isinstance(value, str):
            check_lineage_id(f"the {name} header", value)


def check_lineage_id(what: str, value: str) -> str:
    """A session or step id: empty (none), or 1 to MAX_LINEAGE_ID_CHARS visible ASCII characters
    ('!' to '~'); InvalidArgument naming `what` otherwise."""
    if _is_lineage_id(value):
        return value
    check_length(what, value, MAX_LINEAGE_ID_CHARS)  # too long: says so
    bad = next(i for i, c in enumerate(value) if not _is_visible_ascii(c))
    raise InvalidArgument(
        f"{what} holds {value[bad]!r} at position {bad}: a session or step id is visible ASCII "
        "only (letters, digits, punctuation; no spaces, tabs or control characters)"
    )


def _is_lineage_id(value: str) -> bool:
    return not value or (len(value) <= MAX_LINEAGE_ID_CHARS and _is_visible_ascii(value))


def _lineage_id(value: str) -> str:
    return value if _is_lineage_id(value) else ""


def _is_visible_ascii(value: str) -> bool:
    """'!' to '~' only, and at least one (isascii reads a flag; isprintable refuses controls)."""
    return bool(value) and value.isascii() and value.isprintable() and " " not in value


def current() -> RequestContext:
    ctx = _current.get()
    return ctx if ctx is not None else new_context()


def current_identity() -> Identity:
    return current().identity


def set_current(ctx: RequestContext) -> contextvars.Token:
    return _current.set(ctx)


def reset_current(token: contextvars.Token) -> None:
    _current.reset(token)


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata to send on calls made while serving a request, so ids follow the request."""
    ctx = current()
    return ((REQUEST_ID_KEY, ctx.request_id), (TRACEPARENT_KEY, ctx.traceparent()))
