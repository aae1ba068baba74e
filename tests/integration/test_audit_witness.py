"""The audit chain is anchored outside its database: signed checkpoints in a witness. Someone
with write access to the database (but not to the witness or the signing key) deletes the tail,
deletes everything, rewrites a record and recomputes every hash after it, or appends a record
that links correctly; Verify (RPC, `harness audit verify`, and offline on an export) names each
with its own failure, message and exit code. Real audit service on port 0, mTLS, SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from google.protobuf import timestamp_pb2
from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2
from sqlalchemy import create_engine, delete, func, insert, select, update

from services.audit.models import audit_records
from services.common import audit_chain as chain
from services.common.checkpoints import CHECKPOINT_FILE
from tests.helpers.audit import start_tls_audit
from tests.helpers.grpc import user_metadata

T = audit_records.c
T0 = 1_714_564_800
F = audit_pb2


def event(i: int) -> common_pb2.AuditEvent:
    return common_pb2.AuditEvent(
        event_id=f"e{i}",
        time=timestamp_pb2.Timestamp(seconds=T0 + i),
        kind=common_pb2.AUDIT_EVENT_KIND_TOOL_CALL,
        actor=common_pb2.Actor(user="alice", agent="ledger-bot"),
        tool="ledger",
        action="delete" if i % 10 == 3 else "read",
        decision=common_pb2.DECISION_DENY if i % 10 == 3 else common_pb2.DECISION_ALLOW,
        source="router",
    )


async def ingest(writer, first: int, count: int, batch: int = 10) -> None:
    """Appends events first.. in `batch`-sized Ingest calls (one transaction, one checkpoint each)."""
    for k in range(first, first + count, batch):
        await writer.Ingest(
            F.IngestRequest(events=[event(i) for i in range(k, min(k + batch, first + count))])
        )


# ---- what an attacker with database access does ----


def _engine(db_url: str):
    return create_engine(db_url)


def truncate_tail(db_url: str, n: int) -> None:
    engine = _engine(db_url)
    with engine.begin() as conn:
        head = conn.scalar(select(func.max(T.sequence)))
        conn.execute(delete(audit_records).where(T.sequence > head - n))
    engine.dispose()


def delete_all(db_url: str) -> None:
    engine = _engine(db_url)
    with engine.begin() as conn:
        conn.execute(delete(audit_records))
    engine.dispose()


def rewrite_from(db_url: str, sequence: int) -> None:
    """Turns a refused delete into an allowed one and recomputes every hash from there on."""
    engine = _engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            update(audit_records).where(T.sequence == sequence).values(decision=common_pb2.DECISION_ALLOW)
        )
        rows = conn.execute(select(audit_records).where(T.sequence >= sequence).order_by(T.sequence)).all()
        prev = conn.scalar(select(T.hash).where(T.sequence == sequence - 1)) or ""
        for row in rows:
            h = chain.record_hash(row, row.sequence, prev)
            conn.execute(
                update(audit_records).where(T.sequence == row.sequence).values(prev_hash=prev, hash=h)
            )
            prev = h
    engine.dispose()


def forge_append(db_url: str) -> None:
    """Appends a record that links and hashes correctly, straight into the database."""
    engine = _engine(db_url)
    with engine.begin() as conn:
        head = conn.execute(select(T.sequence, T.hash).order_by(T.sequence.desc()).limit(1)).one()
        row = chain.row_from_event(event(999), (T0 + 999) * 1_000_000)
        seq = head.sequence + 1
        row.update(sequence=seq, prev_hash=head.hash, ingest_time_us=(T0 + 999) * 1_000_000)
        row["hash"] = chain.record_hash(row, seq, head.hash)
        conn.execute(insert(audit_records).values(**row))
    engine.dispose()


def append_line(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line + "\n")


@pytest.fixture
async def mesh(tmp_path, test_auth, db_url):
    m = await start_tls_audit(tmp_path, test_auth, db_url)
    yield m, db_url
    await m.close()


async def verdict(reader, admin) -> audit_pb2.VerifyResponse:
    return await reader.Verify(audit_pb2.VerifyRequest(), metadata=admin)


async def test_every_append_is_checkpointed_and_an_intact_log_verifies(mesh, mint_token):
    m, _ = mesh
    admin = user_metadata(mint_token("ann", "admin"))
    writer, reader = m.stub("router"), m.stub("cli")
    assert (await verdict(reader, admin)).ok  # an empty log needs no checkpoint
    await ingest(writer, 1, 30)
    v = await verdict(reader, admin)
    assert v.ok and v.checked == 30
    assert v.checkpoint.sequence == 30 and v.checkpoint.witness.startswith("file://") and v.checkpoint.key_id
    lines = Path(m.config.witness_url(), CHECKPOINT_FILE).read_text().splitlines()
    assert len(lines) == 3  # one per append transaction (three batches of ten)
    assert json.loads(lines[-1])["checkpoint"]["sequence"] == 30
    assert Path(m.config.witness_key_path() + ".pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY")


@pytest.mark.parametrize(
    "tamper, failure, words",
    [
        (lambda url: truncate_tail(url, 25), F.VERIFY_FAILURE_TRUNCATED, "records 16..40 were deleted"),
        (delete_all, F.VERIFY_FAILURE_TRUNCATED, "every record was deleted"),
        (lambda url: rewrite_from(url, 3), F.VERIFY_FAILURE_REWRITTEN, "rewritten and its hashes recomputed"),
        (forge_append, F.VERIFY_FAILURE_FORGED_APPEND, "written outside the audit service"),
    ],
    ids=["truncated-tail", "all-deleted", "rewritten", "forged-append"],
)
async def test_database_tampering_is_caught_by_the_checkpoint(mesh, mint_token, tamper, failure, words):
    m, db_url = mesh
    admin = user_metadata(mint_token("ann", "admin"))
    writer, reader = m.stub("router"), m.stub("cli")
    await ingest(writer, 1, 40)
    await asyncio.to_thread(tamper, db_url)
    v = await verdict(reader, admin)
    assert not v.ok and v.failure == failure, v.reason
    assert words in v.reason and v.checkpoint.sequence == 40


async def test_tampering_stays_visible_after_the_service_appends_again(mesh, mint_token):
    """The next checkpoint records what the append found: the forged records stay unanchored."""
    m, db_url = mesh
    admin = user_metadata(mint_token("ann", "admin"))
    writer, reader = m.stub("router"), m.stub("cli")
    await ingest(writer, 1, 10)
    await asyncio.to_thread(forge_append, db_url)
    await ingest(writer, 11, 10)
    v = await verdict(reader, admin)
    assert not v.ok and v.failure == F.VERIFY_FAILURE_FORGED_APPEND and "records 11..11" in v.reason
    assert m.metrics.get_sample_value("harness_audit_witness_discontinuities_total") == 1
    await asyncio.to_thread(truncate_tail, db_url, 15)
    await ingest(writer, 21, 5)
    v = await verdict(reader, admin)  # the first anomaly is still the forged record
    assert v.failure == F.VERIFY_FAILURE_FORGED_APPEND


async def test_a_lost_witness_is_reported(mesh, mint_token):
    m, _ = mesh
    admin = user_metadata(mint_token("ann", "admin"))
    writer, reader = m.stub("router"), m.stub("cli")
    await ingest(writer, 1, 10)
    Path(m.config.witness_url(), CHECKPOINT_FILE).unlink()
    v = await verdict(reader, admin)
    assert not v.ok and v.failure == F.VERIFY_FAILURE_CHECKPOINT_MISSING
    assert "no signed checkpoint" in v.reason


async def test_a_forged_checkpoint_is_refused(mesh, mint_token):
    """Someone who can append to the witness but lacks the key cannot vouch for a rewrite."""
    m, db_url = mesh
    admin = user_metadata(mint_token("ann", "admin"))
    writer, reader = m.stub("router"), m.stub("cli")
    await ingest(writer, 1, 10)
    await asyncio.to_thread(rewrite_from, db_url, 3)
    path = Path(m.config.witness_url(), CHECKPOINT_FILE)
    last = json.loads(path.read_text().splitlines()[-1])
    engine = _engine(db_url)
    with engine.connect() as conn:
        last["checkpoint"]["head_hash"] = conn.scalar(select(T.hash).where(T.sequence == 10))
    engine.dispose()
    last["checkpoint"]["base_sequence"], last["checkpoint"]["base_hash"] = 10, last["checkpoint"]["head_hash"]
    await asyncio.to_thread(append_line, path, json.dumps(last))
    v = await verdict(reader, admin)
    assert not v.ok and v.failure == F.VERIFY_FAILURE_CHECKPOINT_MISSING and "does not verify" in v.reason
