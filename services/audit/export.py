"""Export encodings (core code, no gRPC): one flat row per record, as JSONL or CSV, in chunks.

Columns (both formats): see COLUMNS. Enums are short lowercase names ("tool_call", "deny"),
times RFC3339 UTC with microseconds, `resource` is the event's object, `redactions` is the
event's details["redactions"] (kinds and counts as the producer wrote them; {} when absent) and
`details` the whole details Struct. In CSV, object-valued cells hold compact JSON.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from google.protobuf import json_format
from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2

from services.audit.lineage import enum_short
from services.common import audit_chain as chain

COLUMNS = (
    "seq",
    "id",
    "time",
    "kind",
    "user",
    "agent",
    "agent_version",
    "project",
    "team",
    "auth_method",
    "request_id",
    "trace_id",
    "session_id",
    "step_id",
    "parent_event_id",
    "resource",
    "action",
    "decision",
    "rule",
    "status",
    "model",
    "tool",
    "source",
    "redactions",
    "details",
    "prev_hash",
    "hash",
    "ingest_time",
)
CHUNK_BYTES = 256 * 1024  # flush a chunk once it reaches this size (always on a row boundary)
JSONL, CSV = audit_pb2.EXPORT_FORMAT_JSONL, audit_pb2.EXPORT_FORMAT_CSV


def flat(record: audit_pb2.AuditRecord) -> dict[str, Any]:
    """The export row of one record."""
    ev = record.event
    details = json_format.MessageToDict(ev.details)
    return {
        "seq": record.sequence,
        "id": ev.event_id,
        "time": chain.rfc3339(chain.ts_to_us(ev.time)),
        "kind": enum_short(common_pb2.AuditEventKind, ev.kind),
        "user": ev.actor.user,
        "agent": ev.actor.agent,
        "agent_version": ev.actor.agent_version,
        "project": ev.actor.project,
        "team": ev.actor.team,
        "auth_method": ev.actor.auth_method,
        "request_id": ev.correlation.request_id,
        "trace_id": ev.correlation.trace_id,
        "session_id": ev.correlation.session_id,
        "step_id": ev.correlation.step_id,
        "parent_event_id": ev.correlation.parent_event_id,
        "resource": ev.object,
        "action": ev.action,
        "decision": enum_short(common_pb2.Decision, ev.decision),
        "rule": ev.rule,
        "status": ev.status,
        "model": ev.model,
        "tool": ev.tool,
        "source": ev.source,
        "redactions": details.get("redactions", {}),
        "details": details,
        "prev_hash": record.prev_hash,
        "hash": record.hash,
        "ingest_time": chain.rfc3339(chain.ts_to_us(record.ingest_time)),
    }


def jsonl_line(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"


def csv_lines(rows: list[dict[str, Any]], header: bool) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(
            json.dumps(row[c], ensure_ascii=False, separators=(",", ":"), sort_keys=True)
            if isinstance(row[c], dict | list)
            else row[c]
            for c in COLUMNS
        )
    return buf.getvalue()


def normalize_format(fmt: int) -> int:
    """UNSPECIFIED means JSONL; an unknown number raises ValueError."""
    if fmt == audit_pb2.EXPORT_FORMAT_UNSPECIFIED:
        return JSONL
    if fmt not in (JSONL, CSV):
        raise ValueError(f"unknown export format {fmt}")
    return fmt


async def chunks(
    batches: AsyncIterable[list[audit_pb2.AuditRecord]], fmt: int, chunk_bytes: int = CHUNK_BYTES
) -> AsyncIterator[bytes]:
    """Encodes record batches as `fmt` and yields chunks of about `chunk_bytes` (row boundaries).

    CSV always starts with its header row, even when nothing matched; JSONL of nothing is empty.
    """
    fmt = normalize_format(fmt)
    pending: list[bytes] = []
    size = 0
    if fmt == CSV:
        pending.append(csv_lines([], header=True).encode())
        size = len(pending[0])
    async for batch in batches:
        for record in batch:
            row = flat(record)
            line = (jsonl_line(row) if fmt == JSONL else csv_lines([row], header=False)).encode("utf-8")
            pending.append(line)
            size += len(line)
            if size >= chunk_bytes:
                yield b"".join(pending)
                pending, size = [], 0
    if pending:
        yield b"".join(pending)
