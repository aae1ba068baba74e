"""Lineage tree building and export encodings (core code, no server)."""

from __future__ import annotations

import csv
import io
import json

from google.protobuf import timestamp_pb2
from harness.audit.v1 import audit_pb2
from harness.common.v1 import common_pb2

from services.audit import export
from services.audit.lineage import build_tree

T0 = 1_714_564_800
K = common_pb2


def rec(seq, eid, kind=K.AUDIT_EVENT_KIND_MODEL_CALL, *, user="alice", agent="rpa-bot", version="v2",
        step="1", parent="", **fields) -> audit_pb2.AuditRecord:  # fmt: skip
    ev = common_pb2.AuditEvent(
        event_id=eid,
        time=timestamp_pb2.Timestamp(seconds=T0 + seq),
        kind=kind,
        actor=common_pb2.Actor(user=user, agent=agent, agent_version=version),
        correlation=common_pb2.Correlation(
            trace_id="t1", session_id="s1", step_id=step, parent_event_id=parent
        ),
        **fields,
    )
    return audit_pb2.AuditRecord(
        sequence=seq, event=ev, prev_hash=f"h{seq - 1}" if seq > 1 else "", hash=f"h{seq}",
        ingest_time=timestamp_pb2.Timestamp(seconds=T0 + 100),
    )  # fmt: skip


def shape(nodes) -> list:
    return [(n.label, shape(n.children)) if n.children else n.label for n in nodes]


def test_tree_is_user_agent_version_step_calls_events():
    records = [
        rec(1, "m1", model="llama-3-8b", action="invoke", decision=K.DECISION_ALLOW),
        # The decision about the tool call is stored before the call it names (parent later).
        rec(2, "a1", K.AUDIT_EVENT_KIND_AUTHZ_DECISION, step="2", parent="tc1", object="tool:ledger",
            action="delete", decision=K.DECISION_PENDING_APPROVAL, rule="p, role:rpa, finance, tool:ledger, delete"),
        rec(3, "tc1", K.AUDIT_EVENT_KIND_TOOL_CALL, step="2", tool="ledger", action="delete",
            decision=K.DECISION_DENY),
        rec(4, "ap1", K.AUDIT_EVENT_KIND_APPROVAL, step="2", parent="tc1", tool="ledger", action="delete",
            decision=K.DECISION_DENY),
        rec(5, "r1", K.AUDIT_EVENT_KIND_REDACTION, step="1", parent="nowhere"),
        rec(6, "m2", user="bob", version="", step="", model="llama-3-8b"),
        rec(7, "m3", version="v1", model="llama-3-8b"),
    ]  # fmt: skip
    roots = build_tree(reversed(records))  # input order does not matter; sequence does
    assert shape(roots) == [
        ("user:alice", [
            ("agent:rpa-bot@v2", [
                ("step:1", ["model:llama-3-8b invoke allow", "redaction:(none)"]),
                ("step:2", [
                    ("tool:ledger delete deny", [
                        "authz_decision:tool:ledger delete pending_approval",
                        "approval:ledger delete deny",
                    ]),
                ]),
            ]),
            ("agent:rpa-bot@v1", [("step:1", ["model:llama-3-8b"])]),
        ]),
        ("user:bob", [("agent:rpa-bot", [("step:(none)", ["model:llama-3-8b"])])]),
    ]  # fmt: skip
    alice = roots[0]
    assert (alice.kind, alice.name) == (audit_pb2.LINEAGE_NODE_KIND_USER, "alice")
    agent = alice.children[0]
    assert (agent.kind, agent.name, agent.version) == (
        audit_pb2.LINEAGE_NODE_KIND_AGENT_VERSION,
        "rpa-bot",
        "v2",
    )
    step2 = agent.children[1]
    assert (step2.kind, step2.name) == (audit_pb2.LINEAGE_NODE_KIND_STEP, "2")
    tool = step2.children[0]
    assert tool.kind == audit_pb2.LINEAGE_NODE_KIND_TOOL_CALL and tool.name == "tc1"
    assert tool.record.sequence == 3 and tool.record.event.tool == "ledger"
    assert [c.kind for c in tool.children] == [audit_pb2.LINEAGE_NODE_KIND_EVENT] * 2
    assert tool.children[0].record.event.rule.startswith("p, role:rpa")
    assert not alice.HasField("record") and not step2.HasField("record")
    assert build_tree([]) == []


def test_a_call_never_nests_under_another_event():
    records = [rec(1, "tc1", K.AUDIT_EVENT_KIND_TOOL_CALL, tool="x", parent="m1"), rec(2, "m1", tool="")]
    assert shape(build_tree(records)) == [
        ("user:alice", [("agent:rpa-bot@v2", [("step:1", ["tool:x", "model:(none)"])])])
    ]


def _records():
    r1 = rec(1, "e1", K.AUDIT_EVENT_KIND_TOOL_CALL, tool="ledger", action="delete", object="tool:ledger",
             decision=K.DECISION_DENY, rule="p, a, b", status="PERMISSION_DENIED", source="router")  # fmt: skip
    r1.event.details.update({"redactions": {"phone": 2, "id_cn": 1}, "endpoint": "http://x"})
    r2 = rec(2, "e2", user="张三", model="llama", action="invoke")
    return [r1, r2]


async def _collect(fmt, batches, chunk_bytes=export.CHUNK_BYTES) -> bytes:
    async def gen():
        for b in batches:
            yield b

    return b"".join([c async for c in export.chunks(gen(), fmt, chunk_bytes)])


REQUIRED = {"seq", "id", "time", "kind", "user", "agent", "agent_version", "session_id", "step_id", "trace_id",
            "action", "resource", "decision", "rule", "redactions", "prev_hash", "hash"}  # fmt: skip


async def test_jsonl_export_rows():
    data = await _collect(audit_pb2.EXPORT_FORMAT_UNSPECIFIED, [_records()[:1], _records()[1:]])
    lines = data.decode().splitlines()
    rows = [json.loads(x) for x in lines]
    assert len(rows) == 2 and REQUIRED <= set(rows[0]) and list(rows[0]) == list(export.COLUMNS)
    r = rows[0]
    assert (r["seq"], r["id"], r["kind"], r["decision"]) == (1, "e1", "tool_call", "deny")
    assert r["time"] == "2024-05-01T12:00:01.000000Z" and r["resource"] == "tool:ledger"
    assert r["redactions"] == {"phone": 2, "id_cn": 1} and r["details"]["endpoint"] == "http://x"
    assert (r["prev_hash"], r["hash"], r["agent_version"], r["step_id"]) == ("", "h1", "v2", "1")
    assert rows[1]["user"] == "张三" and rows[1]["redactions"] == {} and rows[1]["prev_hash"] == "h1"


async def test_csv_export_has_a_header_and_the_same_columns():
    data = await _collect(audit_pb2.EXPORT_FORMAT_CSV, [_records()])
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    assert len(rows) == 2 and tuple(rows[0]) == export.COLUMNS
    assert rows[0]["seq"] == "1" and rows[0]["decision"] == "deny" and rows[1]["user"] == "张三"
    assert json.loads(rows[0]["redactions"]) == {"id_cn": 1, "phone": 2}
    empty = await _collect(audit_pb2.EXPORT_FORMAT_CSV, [])
    assert empty.decode().strip() == ",".join(export.COLUMNS)
    assert await _collect(audit_pb2.EXPORT_FORMAT_JSONL, []) == b""


async def test_chunks_end_on_row_boundaries():
    many = [rec(i, f"e{i}") for i in range(1, 40)]

    async def gen():
        yield many

    chunks = [c async for c in export.chunks(gen(), audit_pb2.EXPORT_FORMAT_JSONL, chunk_bytes=1500)]
    assert len(chunks) > 3
    for c in chunks:
        assert c.endswith(b"\n")
        assert all(json.loads(line) for line in c.splitlines())
    assert sum(len(c.splitlines()) for c in chunks) == 39
