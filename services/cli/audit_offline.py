"""`harness audit verify --export FILE`: checks an export of the whole log against a copy of the
witness and the audit service's public key, without the service (e.g. on an auditor's laptop).

The export is the JSONL of `harness audit export` with no filters: every record from 1, each
with its prev_hash and hash. Each hash is recomputed from the row (the canonical encoding in
services/common/audit_chain.py), each link checked, and the result judged against the signed
checkpoints exactly as the service's Verify does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from harness.common.v1 import common_pb2

from services.common import audit_chain as chain
from services.common.checkpoints import (
    SignedCheckpoint,
    Witness,
    WitnessError,
    check_continuity,
    check_head,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_ROW = 4 * 1024 * 1024  # bytes of one export line


class ExportError(ValueError):
    """The file is not a JSONL export of the audit log."""


@dataclass(frozen=True)
class OfflineVerdict:
    ok: bool
    checked: int
    failure: str = ""  # as the service's VerifyFailure, lowercase without prefix
    sequence: int = 0
    reason: str = ""
    expected: str = ""
    found: str = ""
    checkpoint: SignedCheckpoint | None = None


def _us(rfc3339: str) -> int:
    at = datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return (at - _EPOCH) // timedelta(microseconds=1)


def _enum(enum_type, short: str) -> int:
    if not short:
        return 0
    if short.isdigit():  # a value the exporting build did not know
        return int(short)
    prefix = enum_type.DESCRIPTOR.values[0].name.removesuffix("UNSPECIFIED")
    return enum_type.Value(prefix + short.upper())


def stored_row(row: dict) -> dict:
    """An export row as the columns the chain hash covers."""
    m = {f: row[f] for f in (*chain.ACTOR_FIELDS, *chain.CORRELATION_FIELDS)}
    m.update({f: row[f] for f in chain.EVENT_FIELDS if f != "object"})
    m.update(
        event_id=row["id"], time_us=_us(row["time"]), object=row["resource"],
        kind=_enum(common_pb2.AuditEventKind, row["kind"]), decision=_enum(common_pb2.Decision, row["decision"]),
        details=json.dumps(row["details"]),
    )  # fmt: skip
    return m


def _rows(lines: Iterable[bytes]):
    for n, line in enumerate(lines, start=1):
        if len(line) > MAX_ROW:
            raise ExportError(f"line {n} is longer than {MAX_ROW} bytes")
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            yield int(row["seq"]), row
        except (ValueError, KeyError, TypeError) as exc:
            raise ExportError(f"line {n} is not a record of a JSONL audit export ({exc})") from None


def verify_export(lines: Iterable[bytes], witness: Witness, public_key) -> OfflineVerdict:
    try:
        broken, latest = check_continuity(witness.entries(), public_key)
    except WitnessError as exc:
        return OfflineVerdict(False, 0, "checkpoint_missing", 1, f"{exc}: the witness is unreadable")
    anchored = latest.checkpoint.sequence if latest else 0
    hash_at_anchor: str | None = None
    expected_seq, prev, checked = 1, "", 0
    for seq, row in _rows(lines):
        if seq != expected_seq:
            return OfflineVerdict(
                False, checked, "missing_record", expected_seq,
                f"record {expected_seq} is missing (the next record in the export is {seq}): records "
                "were deleted, or the export was filtered (verify needs an export of the whole log)",
                str(expected_seq), str(seq), latest,
            )  # fmt: skip
        if row["prev_hash"] != prev:
            return OfflineVerdict(
                False, checked, "link_broken", seq,
                f"prev_hash link broken: record {seq} (event {row['id']}) has prev_hash {row['prev_hash']!r} "
                f"but record {seq - 1} has hash {prev!r}", prev, row["prev_hash"], latest,
            )  # fmt: skip
        try:
            computed = chain.record_hash(stored_row(row), seq, prev)
        except (ValueError, KeyError, TypeError) as exc:
            raise ExportError(f"record {seq} is not a row of a JSONL audit export ({exc})") from None
        if computed != row["hash"]:
            return OfflineVerdict(
                False, checked, "hash_mismatch", seq,
                f"hash mismatch: record {seq} (event {row['id']}) stores {row['hash']} but its contents "
                f"hash to {computed} (the record was changed after it was written)", computed, row["hash"], latest,
            )  # fmt: skip
        if seq == anchored:
            hash_at_anchor = computed
        prev, expected_seq, checked = computed, seq + 1, checked + 1
    verdict = broken or check_head(latest, checked, lambda s: hash_at_anchor if s == anchored else None)
    if verdict is None:
        return OfflineVerdict(True, checked, checkpoint=latest)
    return OfflineVerdict(
        False,
        checked,
        verdict.failure,
        verdict.sequence,
        verdict.reason,
        verdict.expected,
        verdict.found,
        latest,
    )
