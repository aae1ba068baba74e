"""Canonical encoding of an audit record and its chain hash.

hash = sha256(canonical(record) || prev_hash), where prev_hash is the previous record's hash as
lowercase hex ASCII ("" for the first record) and canonical(record) is UTF-8 JSON with sorted
keys and no whitespace of the event fields plus the sequence. Every field is always present
(empty values included) so the encoding does not depend on which fields a sender set; enums
are written by name and times as RFC3339 UTC with exactly six fractional digits. This module
is the specification an external verifier re-implements, so keep it small and explicit.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from harness.common.v1 import common_pb2

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ACTOR_FIELDS = ("user", "agent", "agent_version", "project", "team", "auth_method")
CORRELATION_FIELDS = ("request_id", "trace_id", "session_id", "step_id", "parent_event_id")
EVENT_FIELDS = ("object", "action", "rule", "status", "model", "tool", "source")


def ts_to_us(ts: timestamp_pb2.Timestamp) -> int:
    """Protobuf Timestamp -> integer microseconds (sub-microsecond digits are dropped)."""
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def us_to_ts(us: int) -> timestamp_pb2.Timestamp:
    seconds, micros = divmod(us, 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000)


def rfc3339(us: int) -> str:
    return (_EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _enum_name(enum_type, value: int) -> str:
    try:
        return enum_type.Name(value)
    except ValueError:  # a newer sender's value this build does not know: keep the number
        return str(value)


def details_json(details: struct_pb2.Struct) -> str:
    """The Struct as canonical JSON text (how it is stored)."""
    return json.dumps(json_format.MessageToDict(details), sort_keys=True, separators=(",", ":"))


def row_from_event(event: common_pb2.AuditEvent, time_us: int) -> dict[str, Any]:
    """Column values for an event (without sequence and hashes)."""
    row: dict[str, Any] = {"event_id": event.event_id, "time_us": time_us, "kind": event.kind}
    row.update({f: getattr(event.actor, f) for f in ACTOR_FIELDS})
    row.update({f: getattr(event.correlation, f) for f in CORRELATION_FIELDS})
    row.update({f: getattr(event, f) for f in EVENT_FIELDS})
    row["decision"] = event.decision
    row["details"] = details_json(event.details)
    return row


def event_from_row(row: Any) -> common_pb2.AuditEvent:
    """Rebuilds the AuditEvent from a stored row (a mapping or SQLAlchemy Row)."""
    m = row._mapping if hasattr(row, "_mapping") else row
    event = common_pb2.AuditEvent(
        event_id=m["event_id"],
        time=us_to_ts(m["time_us"]),
        kind=m["kind"],
        actor=common_pb2.Actor(**{f: m[f] for f in ACTOR_FIELDS}),
        correlation=common_pb2.Correlation(**{f: m[f] for f in CORRELATION_FIELDS}),
        decision=m["decision"],
        **{f: m[f] for f in EVENT_FIELDS},
    )
    json_format.ParseDict(json.loads(m["details"] or "{}"), event.details)
    return event


def canonical(row: Any, sequence: int) -> bytes:
    """The bytes that are hashed for one record."""
    m = row._mapping if hasattr(row, "_mapping") else row
    doc = {
        "sequence": sequence,
        "event_id": m["event_id"],
        "time": rfc3339(m["time_us"]),
        "kind": _enum_name(common_pb2.AuditEventKind, m["kind"]),
        "decision": _enum_name(common_pb2.Decision, m["decision"]),
        "actor": {f: m[f] for f in ACTOR_FIELDS},
        "correlation": {f: m[f] for f in CORRELATION_FIELDS},
        "details": json.loads(m["details"] or "{}"),
        **{f: m[f] for f in EVENT_FIELDS},
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def record_hash(row: Any, sequence: int, prev_hash: str) -> str:
    return hashlib.sha256(canonical(row, sequence) + prev_hash.encode("utf-8")).hexdigest()
