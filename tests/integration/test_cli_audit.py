"""`harness audit query|lineage|export|verify` against a real audit service on port 0: the CLI
finds it at HARNESS_AUDIT_ADDR, reads as an auditor, and `verify` fails (exit 1) naming a record
changed directly in the database."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf import timestamp_pb2
from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2
from sqlalchemy import create_engine, delete, insert, select, update

from services.audit.models import audit_records
from services.cli.main import main
from services.common import audit_chain as chain
from services.common.checkpoints import CHECKPOINT_FILE, CheckpointSigner
from tests.helpers.audit import start_tls_audit

T0 = 1_714_564_800
REQUIRED = {"seq", "id", "time", "kind", "user", "agent", "agent_version", "session_id", "step_id", "trace_id",
            "action", "resource", "decision", "rule", "redactions", "prev_hash", "hash"}  # fmt: skip


@dataclass
class Result:
    rc: int
    out: str
    err: str


def _event(eid: str, second: int, kind: int, step: str, **f) -> common_pb2.AuditEvent:
    parent = f.pop("parent", "")
    ev = common_pb2.AuditEvent(
        event_id=eid,
        time=timestamp_pb2.Timestamp(seconds=T0 + second),
        kind=kind,
        actor=common_pb2.Actor(user="alice", agent="rpa-bot", agent_version="v3"),
        correlation=common_pb2.Correlation(
            trace_id=f.pop("trace", "t-ledger"), session_id="s1", step_id=step, parent_event_id=parent
        ),
        source="router",
        **f,
    )
    return ev


def story() -> list[common_pb2.AuditEvent]:
    k = common_pb2
    redacted = _event("m1", 0, k.AUDIT_EVENT_KIND_MODEL_CALL, "1", model="llama-3-8b", action="invoke",
                      decision=k.DECISION_ALLOW)  # fmt: skip
    redacted.details.update({"redactions": {"phone": 1}})
    return [
        redacted,
        _event("tc1", 1, k.AUDIT_EVENT_KIND_TOOL_CALL, "2", tool="ledger", action="delete", object="tool:ledger",
               decision=k.DECISION_DENY, status="PERMISSION_DENIED"),
        _event("az1", 2, k.AUDIT_EVENT_KIND_AUTHZ_DECISION, "2", parent="tc1", tool="ledger", action="delete",
               decision=k.DECISION_PENDING_APPROVAL, rule="p, role:rpa, finance, tool:ledger, delete"),
        _event("x1", 3, k.AUDIT_EVENT_KIND_MODEL_CALL, "1", trace="t-other", model="llama-3-8b"),
    ]  # fmt: skip


@pytest.fixture
async def audit(tmp_path, test_auth):
    """The service with mTLS; the stack's certificates under <root>/certs, as `harness up` makes them."""
    mesh = await start_tls_audit(tmp_path, test_auth, certs_dir=tmp_path / "harness" / "certs")
    await mesh.stub("router").Ingest(audit_pb2.IngestRequest(events=story()))
    yield mesh, mesh.config.db_url
    await mesh.close()


@pytest.fixture
def cli(audit, tmp_path, capsys, monkeypatch, mint_token):
    mesh, _ = audit
    root = tmp_path / "harness"
    (root / "tokens").mkdir(parents=True)
    # The registry address is there too (as `harness up` writes it): audit commands must not use it.
    (root / "env").write_text(
        f"export HARNESS_AUDIT_ADDR='127.0.0.1:{mesh.running.port}'\nexport HARNESS_REGISTRY_ADDR='127.0.0.1:1'\n"
        f"export HARNESS_CA='{mesh.certs.ca_cert}'\n"
    )
    (root / "tokens" / "carol.jwt").write_text(mint_token("carol", "auditor"))
    (root / "tokens" / "dave.jwt").write_text(mint_token("dave", "analyst"))
    for name in (
        "HARNESS_ADDR",
        "HARNESS_AUDIT_ADDR",
        "HARNESS_REGISTRY_ADDR",
        "HARNESS_TOKEN",
        "HARNESS_CA",
        "HARNESS_OPS_CERT",
        "HARNESS_OPS_KEY",
        "HARNESS_CERT",
        "HARNESS_KEY",
        "HARNESS_PLAINTEXT",
    ):
        monkeypatch.delenv(name, raising=False)

    async def run(*argv: str, user: str = "carol") -> Result:
        capsys.readouterr()
        rc = await asyncio.to_thread(main, ["audit", *argv, "--root", str(root), "--user", user])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return Result(rc, out, err)

    return run


async def test_query_table_json_and_filters(cli):
    res = await cli("query")
    assert res.rc == 0, res.err
    lines = res.out.splitlines()
    assert lines[0].split()[:4] == ["SEQ", "TIME", "KIND", "USER"] and len(lines) == 5
    assert "tool_call" in lines[2] and "rpa-bot@v3" in lines[2] and "deny" in lines[2]
    got = json.loads((await cli("query", "--trace", "t-ledger", "--tool", "ledger", "--json")).out)
    assert [r["event"]["event_id"] for r in got["records"]] == ["tc1", "az1"]
    got = json.loads((await cli("query", "--decision", "pending-approval", "--json")).out)
    assert [r["event"]["event_id"] for r in got["records"]] == ["az1"]
    got = json.loads((await cli("query", "--limit", "2", "--json")).out)
    assert len(got["records"]) == 2 and got["page"]["next_page_token"] == "2"
    got = json.loads((await cli("query", "--since", "2024-05-01T12:00:02Z", "--json")).out)
    assert [r["sequence"] for r in got["records"]] == ["3", "4"]  # int64 as JSON strings
    denied = await cli("query", user="dave")
    assert denied.rc == 1 and "PERMISSION_DENIED" in denied.err and "auditor" in denied.err


async def test_lineage_prints_the_tree(cli):
    res = await cli("lineage", "--trace", "t-ledger")
    assert res.rc == 0, res.err
    lines = res.out.splitlines()
    assert lines[0] == "`-- user:alice" and lines[1] == "    `-- agent:rpa-bot@v3"
    text = res.out
    assert text.index("step:1") < text.index("model:llama-3-8b invoke allow") < text.index("step:2")
    assert text.index("tool:ledger delete deny") < text.index("authz_decision:ledger delete pending_approval")
    assert "rule='p, role:rpa, finance, tool:ledger, delete'" in text and "t-other" not in text
    tree = json.loads((await cli("lineage", "--session", "s1", "--json")).out)
    assert tree["record_count"] == "4" and tree["roots"][0]["kind"] == "LINEAGE_NODE_KIND_USER"


async def test_export_jsonl_and_csv(cli, tmp_path):
    res = await cli("export", "--format", "jsonl")
    assert res.rc == 0, res.err
    rows = [json.loads(line) for line in res.out.splitlines()]
    assert len(rows) == 4 and all(REQUIRED <= set(r) for r in rows)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4] and rows[0]["prev_hash"] == ""
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(rows))
    assert rows[0]["redactions"] == {"phone": 1} and rows[0]["agent_version"] == "v3"
    assert (rows[1]["resource"], rows[1]["action"], rows[1]["decision"]) == ("tool:ledger", "delete", "deny")
    assert rows[2]["rule"] == "p, role:rpa, finance, tool:ledger, delete" and rows[2]["step_id"] == "2"
    out = tmp_path / "ledger.csv"
    res = await cli("export", "--format", "csv", "--trace", "t-ledger", "--step", "2", "--out", str(out))
    assert res.rc == 0 and res.out == ""
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["id"] for r in table] == ["tc1", "az1"] and table[0]["kind"] == "tool_call"


async def test_verify_exits_0_when_intact_and_10_naming_a_tampered_record(cli, audit):
    _, db_url = audit
    res = await cli("verify")
    assert res.rc == 0 and res.out.startswith(
        "audit chain intact: 4 records checked; matches the checkpoint of record 4"
    )
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:  # hide who did it
            conn.execute(update(audit_records).where(audit_records.c.sequence == 2).values(user="nobody"))
    finally:
        engine.dispose()
    res = await cli("verify")
    assert res.rc == 10
    assert "audit chain BROKEN: a record was changed (hash_mismatch, record 2, event tc1)" in res.out
    assert "expected:" in res.out and "found:" in res.out
    res = await cli("verify", "--json")
    verdict = json.loads(res.out)
    assert res.rc == 10 and verdict["ok"] is False and verdict["first_broken_event_id"] == "tc1"
    assert verdict["failure"] == "VERIFY_FAILURE_HASH_MISMATCH"
    assert (await cli("verify", "--from", "3")).rc == 0  # the records after it still link


def _tamper(db_url: str, how: str) -> None:
    t = audit_records.c
    engine = create_engine(db_url)
    with engine.begin() as conn:
        if how == "truncate":
            conn.execute(delete(audit_records).where(t.sequence > 2))
        elif how == "rewrite":  # turn the refused delete into an allowed one, recompute every hash
            conn.execute(
                update(audit_records).where(t.sequence == 2).values(decision=common_pb2.DECISION_ALLOW)
            )
            prev = conn.scalar(select(t.hash).where(t.sequence == 1))
            for row in conn.execute(select(audit_records).where(t.sequence >= 2).order_by(t.sequence)).all():
                h = chain.record_hash(row, row.sequence, prev)
                conn.execute(
                    update(audit_records).where(t.sequence == row.sequence).values(prev_hash=prev, hash=h)
                )
                prev = h
        elif how == "append":
            head = conn.execute(select(t.sequence, t.hash).order_by(t.sequence.desc()).limit(1)).one()
            row = chain.row_from_event(common_pb2.AuditEvent(event_id="forged", kind=1), 1_000_000)
            row.update(sequence=head.sequence + 1, prev_hash=head.hash, ingest_time_us=1_000_000)
            row["hash"] = chain.record_hash(row, head.sequence + 1, head.hash)
            conn.execute(insert(audit_records).values(**row))
    engine.dispose()


@pytest.mark.parametrize(
    "how, rc, headline",
    [
        ("truncate", 13, "the log was TRUNCATED (truncated, record 3)"),
        ("rewrite", 14, "the log was REWRITTEN (rewritten, record 4)"),
        ("append", 15, "records were APPENDED outside the audit service (forged_append, record 5)"),
        ("witness", 16, "NO signed CHECKPOINT to check the log against (checkpoint_missing, record 1)"),
    ],
)
async def test_verify_names_truncation_rewrite_forged_append_and_a_lost_witness(
    cli, audit, how, rc, headline
):
    mesh, db_url = audit
    if how == "witness":
        (Path(mesh.config.witness_url()) / CHECKPOINT_FILE).unlink()
    else:
        await asyncio.to_thread(_tamper, db_url, how)
    res = await cli("verify")
    assert res.rc == rc and f"audit chain BROKEN: {headline}" in res.out, res.out


async def test_verify_offline_checks_an_export_against_the_witness(cli, audit, tmp_path):
    mesh, _ = audit
    export = tmp_path / "log.jsonl"
    assert (await cli("export", "--out", str(export))).rc == 0
    offline = ("verify", "--export", str(export), "--witness", mesh.config.witness_url(),
               "--public-key", mesh.config.witness_key_path() + ".pub")  # fmt: skip
    res = await cli(*offline)
    assert (
        res.rc == 0 and "audit chain intact: 4 records checked; matches the checkpoint of record 4" in res.out
    )
    rows = export.read_text().splitlines()
    export.write_text("\n".join(rows[:2]) + "\n")  # the export's tail cut off
    res = await cli(*offline)
    assert res.rc == 13 and "records 3..4 were deleted" in res.out
    changed = json.loads(rows[1])
    changed["decision"] = "allow"
    export.write_text("\n".join([rows[0], json.dumps(changed), *rows[2:]]) + "\n")
    assert (await cli(*offline)).rc == 10
    export.write_text("\n".join(rows) + "\n")
    other_key = tmp_path / "other.key"
    CheckpointSigner.load_or_create(other_key)
    res = await cli(*offline[:-1], str(other_key) + ".pub")  # checkpoints signed by another key
    assert res.rc == 16 and "does not verify" in res.out
    res = await cli("verify", "--export", str(export))
    assert res.rc == 2 and "--witness" in res.err
