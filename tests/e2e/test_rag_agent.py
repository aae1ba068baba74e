"""The example RAG agent (examples/rag_agent) end to end, as `make example-rag` runs it, on the
e2e stack: its answers and their sources, the session's lineage, the usage records of the
embedding and the chat model, and the documents' contact details masked before the engine."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import numpy as np
import pytest
from harness.audit.v1 import audit_pb2, audit_pb2_grpc
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2, cost_pb2_grpc
from qdrant_client import QdrantClient

from examples.rag_agent.corpus import load_chunks
from examples.rag_agent.harness_calls import EMBED_BATCH
from examples.rag_agent.store import DENSE, point_id
from services.enginesim.embedder import vector as simulator_vector
from services.router.redaction import Redactor, policy_from_dict
from tests.e2e.calls import bearer, demo_channel
from tests.e2e.stack import REPO

pytestmark = pytest.mark.e2e
AGENT, CHAT, EMBEDDING = "policy-rag", "llama-3-8b", "all-minilm-l6-v2"
# policy-rag's data policy in compose/demo.yaml, as the router applies it (mask mode).
MASKS = Redactor(
    policy_from_dict({"email": "mask", "phone": "mask"}), key=b"unused-by-mask-mode-----------32"
)
INGEST_CALLS = -(-len(load_chunks()) // EMBED_BATCH)  # POST /v1/embeddings calls of the ingest


async def cost_rows(stack) -> dict[str, cost_pb2.ReportRow]:
    async with demo_channel(stack) as channel:
        report = await cost_pb2_grpc.CostStub(channel).Report(
            cost_pb2.ReportRequest(group_by=["agent", "model", "tool"]),
            metadata=bearer(stack.token("alice")),
            timeout=10,
        )
    # Keyed by model, or "tool:NAME" for a tool call's record.
    return {
        r.group["model"] or f"tool:{r.group['tool']}": r for r in report.rows if r.group.get("agent") == AGENT
    }


@pytest.fixture(scope="module")
def rag_run(stack, tmp_path_factory):
    """One run of the agent with the sample questions: (session, its JSON, the Qdrant folder,
    the cost rows of policy-rag before it)."""
    before = asyncio.run(cost_rows(stack))
    session, qdrant = f"rag-e2e-{uuid.uuid4().hex[:8]}", tmp_path_factory.mktemp("rag") / "qdrant"
    argv = [sys.executable, "-m", "examples.rag_agent", "--env", str(stack.root / "env"),
            "--session", session, "--qdrant", str(qdrant), "--json"]  # fmt: skip
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    return session, json.loads(out.stdout), qdrant, before


def test_each_answer_comes_with_its_sources(rag_run):
    _, run, _, _ = rag_run
    answers = run["answers"]
    assert run["embedded"] == run["chunks"] == len(load_chunks())
    assert len(answers) == 3 and all(a["answer"].strip() and 1 <= len(a["sources"]) <= 3 for a in answers)
    tops = [a["sources"][0]["ref"].split("#")[0] for a in answers]
    assert tops == ["en-expense-reimbursement.md", "zh-personal-information.md", "en-ledger-access.md"]
    assert [a["tool"] is not None for a in answers] == [False, False, True]
    tool = answers[2]["tool"]
    assert tool["ok"] and tool["tool"] == "ledger.read" and json.loads(tool["text"])["ledger"] == "FY2024"


def test_a_user_the_policy_does_not_allow_is_refused_with_the_reason(stack, tmp_path):
    argv = [sys.executable, "-m", "examples.rag_agent", "--env", str(stack.root / "env"), "--user", "mallory",
            "--qdrant", str(tmp_path / "qdrant"), "What is the hotel cap?"]  # fmt: skip
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and not out.stdout
    assert out.stderr.startswith(
        "rag_agent: the Harness answered 403: user 'mallory' may not invoke agent:policy-rag"
    )


async def _session_events(stack, session: str, at_least: int) -> list[common_pb2.AuditEvent]:
    query = audit_pb2.QueryRequest(
        filter=audit_pb2.AuditFilter(session_id=session), page=common_pb2.PageRequest(page_size=1000)
    )
    records = []
    async with demo_channel(stack) as channel:
        audit = audit_pb2_grpc.AuditStub(channel)
        for _ in range(100):  # events ship asynchronously
            records = (await audit.Query(query, metadata=bearer(stack.token("alice")), timeout=10)).records
            if len(records) >= at_least:
                break
            await asyncio.sleep(0.2)
    return [r.event for r in records]


def _calls(events, kind) -> dict[str, list[common_pb2.AuditEvent]]:
    out: dict[str, list] = {}
    for e in events:
        if e.kind == kind:
            out.setdefault(e.correlation.step_id, []).append(e)
    return out


async def test_the_session_lineage_holds_every_step(stack, rag_run):
    session, _, _, _ = rag_run
    ingest = ["ingest", *(f"ingest.{n}" for n in range(2, INGEST_CALLS + 1))]
    steps = [*ingest, "q1-retrieve", "q1-generate", "q2-retrieve", "q2-generate",
             "q3-retrieve", "q3-tool", "q3-generate"]  # fmt: skip
    await _session_events(stack, session, at_least=len(steps))
    async with demo_channel(stack) as channel:
        lineage = await audit_pb2_grpc.AuditStub(channel).Lineage(
            audit_pb2.LineageRequest(session_id=session), metadata=bearer(stack.token("alice")), timeout=10
        )
    [user] = lineage.roots
    [agent] = user.children
    assert (user.label, agent.label) == ("user:alice", f"agent:{AGENT}@v1")
    calls = {
        s.name: [c.label for c in s.children if c.kind != audit_pb2.LINEAGE_NODE_KIND_EVENT]
        for s in agent.children
    }
    assert sorted(calls) == sorted(steps)
    for step, labels in calls.items():
        expected = (
            "tool:ledger@1 read allow" if step.endswith("tool")
            else f"model:{CHAT} invoke allow" if step.endswith("generate")
            else f"model:{EMBEDDING} invoke allow"
        )  # fmt: skip
        assert labels == [expected], (step, labels)
    # The CLI prints the same tree.
    argv = [sys.executable, "-m", "services.cli.main", "audit", "lineage", "--session", session,
            "--root", str(stack.root)]  # fmt: skip
    out = await asyncio.to_thread(subprocess.run, argv, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert (
        f"agent:{AGENT}@v1" in out.stdout and "step:q3-tool" in out.stdout and "step:ingest.3" in out.stdout
    )


async def test_usage_records_charge_embeddings_generation_and_the_tool(stack, rag_run):
    _, _, _, before = rag_run
    expected = {EMBEDDING: INGEST_CALLS + 3, CHAT: 3, "tool:ledger": 1}
    rows = {}
    for _ in range(100):
        rows = await cost_rows(stack)
        done = {m: rows[m].requests - (before[m].requests if m in before else 0) for m in rows}
        if all(done.get(m, 0) >= n for m, n in expected.items()):
            break
        await asyncio.sleep(0.2)
    assert done == expected, rows
    embedding, chat = rows[EMBEDDING], rows[CHAT]
    assert embedding.input_tokens > 0 and embedding.output_tokens == 0 and embedding.cost_micro_usd > 0
    assert chat.input_tokens > 0 and chat.output_tokens > 0 and chat.cost_micro_usd > 0


async def test_contact_details_are_masked_before_the_engine(stack, rag_run):
    session, run, qdrant, _ = rag_run
    chunks = {c.ref: c for c in load_chunks()}
    events = await _session_events(stack, session, at_least=20)
    redactions = _calls(events, common_pb2.AUDIT_EVENT_KIND_REDACTION)

    def reported(steps) -> dict[str, int]:
        total: dict[str, int] = {}
        for step in steps:
            for e in redactions.get(step, []):
                for kind, n in e.details["redactions"].items():
                    total[kind] = total.get(kind, 0) + int(n)
        return total

    # Ingest: the router found exactly the emails and phones the documents hold.
    expected: dict[str, int] = {}
    for chunk in chunks.values():
        for kind, n in MASKS.redact(chunk.text).counts.items():
            expected[kind] = expected.get(kind, 0) + n
    assert expected["email"] >= 5 and expected["phone"] >= 5
    assert reported(s for s in redactions if s.startswith("ingest")) == expected
    # Generation: the sources put before the model had theirs masked too.
    for answer in run["answers"]:
        in_sources: dict[str, int] = {}
        for source in answer["sources"]:
            for kind, n in MASKS.redact(chunks[source["ref"]].text).counts.items():
                in_sources[kind] = in_sources.get(kind, 0) + n
        assert reported([f"q{answer['number']}-generate"]) == in_sources
    assert any(reported([f"q{n}-generate"]) for n in (1, 2, 3))
    assert all("dpo@example.com" not in str(e) and "13812345678" not in str(e) for e in events)

    # The engine saw the masked text: the simulator's vector is a function of the text it got.
    chunk = chunks["en-privacy.md#1"]
    masked = MASKS.redact(chunk.text).text
    assert "[EMAIL]" in masked and "[PHONE]" in masked
    client = QdrantClient(path=str(qdrant))
    try:
        [collection] = [c.name for c in client.get_collections().collections]
        [point] = client.retrieve(collection, [point_id(chunk.ref)], with_vectors=True)
    finally:
        client.close()
    stored = np.asarray(point.vector[DENSE])
    assert point.payload["text"] == chunk.text  # the agent keeps its own documents as they are
    dims = stored.shape[0]
    assert np.allclose(stored, simulator_vector(masked, dims), atol=1e-5)
    assert not np.allclose(stored, simulator_vector(chunk.text, dims), atol=1e-2)
