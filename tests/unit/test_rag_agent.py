"""The example RAG agent's own logic with fakes for the Harness: chunking, lexical terms, the
Qdrant index (in-process), the graph's steps and lineage ids, and its settings."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from examples.rag_agent import app, corpus, lexical
from examples.rag_agent.graph import AgentParts, build_graph, filter_hits, ledger_named, prompt, rerank
from examples.rag_agent.harness_calls import ToolResult
from examples.rag_agent.settings import Harness, SettingsError
from examples.rag_agent.store import Hit, PolicyIndex, open_client
from services.router.redaction import Redactor, policy_from_dict
from services.router.scheduling.profiles import load_config
from services.router.scheduling.types import SchedulingRequest


def fake_vector(text: str) -> list[float]:
    """A stable 32-dimensional vector per text (no meaning: retrieval must not depend on it)."""
    digest = hashlib.sha256(text.encode()).digest()
    return [b / 255 - 0.5 for b in digest]


class FakeEmbeddings:
    def __init__(self) -> None:
        self.steps: list[str] = []

    async def embed(self, texts, step):
        self.steps.append(step)
        return [fake_vector(t) for t in texts]


class FakeChat:
    """Stands in for ChatOpenAI: records what the generate step sent, answers a fixed text."""

    def __init__(self) -> None:
        self.calls: list[tuple[list, dict]] = []

    async def ainvoke(self, messages, **kwargs):
        self.calls.append((messages, kwargs))
        return type("Reply", (), {"content": "See [1]."})()


def harness(tmp_path: Path) -> Harness:
    return Harness("https://h/v1", "https://h/mcp", tmp_path, tmp_path, tmp_path, "tok", "policy-rag", "s-1")


def test_documents_are_chunked_under_their_title_and_bounded():
    chunks = corpus.load_chunks()
    docs = {c.doc for c in chunks}
    assert len(docs) >= 30 and {c.lang for c in chunks} == {"en", "zh"}
    for c in chunks:
        title, _, body = c.text.partition("\n")
        assert title == c.title and body and len(body) <= corpus.MAX_CHUNK_CHARS
    assert len({c.ref for c in chunks}) == len(chunks)


def test_some_documents_hold_pii_that_the_harness_masks():
    """The corpus exercises redaction: emails and phone numbers the router's recognizers find."""
    redactor = Redactor(policy_from_dict({"email": "mask", "phone": "mask"}), key=b"k" * 32)
    found = {}
    for path in sorted(corpus.DOCUMENTS.glob("*.md")):
        for kind, n in redactor.redact(path.read_text()).counts.items():
            found[kind] = found.get(kind, 0) + n
    assert found.get("email", 0) >= 5 and found.get("phone", 0) >= 5


def test_long_paragraphs_split_at_sentence_ends():
    text = "# T\n\n" + " ".join(f"Sentence number {i} is here." for i in range(40)) + "\n\n短段落。"
    chunks = corpus.chunk_document("t.md", text, limit=120)
    assert len(chunks) > 3 and all(len(c.text.split("\n", 1)[1]) <= 120 for c in chunks[:-1])
    assert all(c.text.rstrip().endswith((".", "。")) for c in chunks)
    assert corpus.language("个人信息保护办法 (PIPL)") == "zh" and corpus.language("Leave policy") == "en"


def test_lexical_terms_use_words_and_chinese_bigrams():
    assert lexical.terms("The ledger, FY2024!") == ["ledger", "fy2024"]
    assert lexical.terms("个人信息") == ["个人", "人信", "信息"]
    assert lexical.coverage("个人信息泄露", "发现个人信息泄露的，应在二十四小时内报告") == 1.0
    assert lexical.coverage("ledger access", "the travel policy") == 0.0
    ids, weights = lexical.sparse_vector("ledger ledger access")
    assert len(ids) == 2 and sorted(weights) == [1.0, pytest.approx(1.6931, abs=1e-3)]


def test_hybrid_search_finds_an_exact_term_whatever_the_embedding():
    chunks = corpus.load_chunks()
    index = PolicyIndex(open_client(":memory:"), "t")
    index.create(32)
    index.add(chunks, [fake_vector(c.text) for c in chunks])
    assert index.count() == len(chunks)
    hits = index.search("three-way match invoice", fake_vector("unrelated"), limit=5)
    # The lexical ranking's first is in the fused list even though the dense half is noise.
    best = max(hits, key=lambda h: h.lexical_score)
    assert best.chunk.doc == "en-invoice-payment.md" and best.fused >= 1 / 61
    assert [h.fused for h in hits] == sorted((h.fused for h in hits), reverse=True)


async def test_the_graph_runs_each_step_with_its_lineage_id(tmp_path):
    chunks = corpus.load_chunks()
    index = PolicyIndex(open_client(":memory:"), "t")
    embeddings, chat, tool_calls = FakeEmbeddings(), FakeChat(), []

    async def fake_tool(h, step, tool, arguments):
        tool_calls.append((step, tool, arguments))
        return ToolResult(tool, arguments, True, '{"count": 0}')

    assert await app.ingest(index, embeddings, chunks, force=False) == len(chunks)
    assert await app.ingest(index, embeddings, chunks, force=False) == 0  # already indexed
    graph = build_graph(AgentParts(harness(tmp_path), index, embeddings, chat, fake_tool))
    plain = await graph.ainvoke(
        {"number": 1, "question": "How long may I carry over annual leave?", "tool": None}
    )
    ledger = await graph.ainvoke({"number": 2, "question": "What does ledger FY2024 hold?", "tool": None})

    assert embeddings.steps == ["ingest", "q1-retrieve", "q2-retrieve"]
    assert tool_calls == [("q2-tool", "ledger.read", {"ledger": "FY2024"})]
    assert [kw["extra_headers"]["x-harness-step-id"] for _, kw in chat.calls] == [
        "q1-generate",
        "q2-generate",
    ]
    assert all(kw["extra_headers"]["x-harness-session-id"] == "s-1" for _, kw in chat.calls)
    assert plain["ranked"][0][1].chunk.doc == "en-leave.md" and plain["answer"] == "See [1]."
    sent = chat.calls[0][0][1].content
    assert sent.startswith("Sources:\n[1] Annual leave and absence") and "carry over" in sent
    assert "Ledger lookup (ledger.read" in chat.calls[1][0][1].content and ledger["tool"].ok
    for state in (plain, ledger):
        docs = [h.chunk.doc for h in state["kept"]]
        assert len(state["ranked"]) <= 3 and all(docs.count(d) <= 2 for d in docs)


def test_filter_keeps_relevant_chunks_and_rerank_prefers_coverage():
    def hit(doc: str, index: int, text: str, dense: float, fused: float) -> Hit:
        return Hit(corpus.Chunk(doc, "T", corpus.language(text), index, text), dense, 0.0, fused)

    hits = [
        hit("a.md", 0, "hotel nights are capped", 0.1, 0.030),  # a term, far in the embedding space
        hit("b.md", 0, "parental leave", 0.9, 0.020),  # no term, but close: a paraphrase
        hit("c.md", 0, "parental leave", 0.1, 0.016),  # neither: dropped
        hit("a.md", 1, "hotel booking", 0.1, 0.015),
        hit("a.md", 2, "hotel tiers", 0.1, 0.014),  # a third chunk of a.md: dropped
    ]
    kept = filter_hits({"question": "hotel cap?", "hits": hits})["kept"]
    assert [(h.chunk.doc, h.chunk.index) for h in kept] == [("a.md", 0), ("b.md", 0), ("a.md", 1)]
    ranked = rerank({"question": "hotel cap?", "kept": kept})["ranked"]
    assert [h.chunk.ref for _, h in ranked] == ["a.md#0", "a.md#1", "b.md#0"]


def test_ledger_names_and_an_empty_context():
    assert (
        ledger_named("what does ledger fy2023 hold") == "FY2023"
        and ledger_named("FY2025 总账余额") == "FY2025"
    )
    assert ledger_named("the ledger policy") is None
    assert "(no policy matched the question)" in prompt({"question": "q", "ranked": [], "tool": None})


def test_the_demo_registers_the_agent_as_rag_so_the_prefix_heavy_profile_schedules_it():
    demo = yaml.safe_load((Path(__file__).resolve().parents[2] / "compose" / "demo.yaml").read_text())
    [agent] = [a for a in demo["registry"]["agents"] if a["name"] == "policy-rag"]
    request = SchedulingRequest(model="llama-3-8b", agent="policy-rag", agent_type=agent["type"],
                                slo_class=agent["slo"]["slo_class"])  # fmt: skip
    assert load_config().selector.select(request) == "prefix-heavy"
    [version] = agent["versions"]
    assert {"llama-3-8b", "all-minilm-l6-v2"} <= set(version["models"]) and "ledger" in version["tools"]
    kinds = {rule["kind"]: rule["mode"] for rule in agent["data_policy"]["pii"]}
    assert kinds["email"] == kinds["phone"] == "mask"


def test_settings_come_from_the_env_file_and_name_what_is_missing(tmp_path):
    certs = tmp_path / "certs" / "agents"
    certs.mkdir(parents=True)
    for name in ("demo-agent.pem", "demo-agent.key", "policy-rag.pem", "policy-rag.key"):
        (certs / name).write_text("x")
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / "bob.jwt").write_text("bob-token\n")
    env = tmp_path / "env"
    env.write_text(
        "export HARNESS_OPENAI_BASE_URL='https://localhost:1/v1'\nexport HARNESS_MCP_URL='https://localhost:1/mcp'\n"
        f"export HARNESS_CA='{tmp_path}/ca.pem'\nexport HARNESS_CERT='{certs}/demo-agent.pem'\n"
        "export HARNESS_TOKEN='alice-token'\nexport PATH=/x:$PATH\n"
    )
    h = Harness.load(env, "policy-rag", None, "s")
    assert (h.cert.name, h.key.name, h.token, h.mcp_url) == (
        "policy-rag.pem",
        "policy-rag.key",
        "alice-token",
        "https://localhost:1/mcp",
    )
    assert Harness.load(env, "policy-rag", "bob", "s").token == "bob-token"
    assert h.headers("q1-generate") == {"x-harness-session-id": "s", "x-harness-step-id": "q1-generate"}
    with pytest.raises(SettingsError, match="harness certs issue agent nobody"):
        Harness.load(env, "nobody", None, "s")
    with pytest.raises(SettingsError, match="harness tokens issue carol"):
        Harness.load(env, "policy-rag", "carol", "s")
    with pytest.raises(SettingsError, match="make run"):
        Harness.load(tmp_path / "missing", "policy-rag", None, "s")
