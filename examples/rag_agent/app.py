"""One run of the agent: ingest the corpus when the index is missing, then answer each question."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import openai
from langchain_openai import ChatOpenAI

from .corpus import Chunk, fingerprint, load_chunks
from .graph import AgentParts, build_graph
from .harness_calls import EMBED_BATCH, HarnessEmbeddings, ToolResult
from .settings import SESSION_HEADER, Harness
from .store import PolicyIndex, open_client

DEFAULT_QUESTIONS = (
    "How many days do I have to submit an expense claim, and whom do I ask about it?",
    "发现个人信息泄露后应该在多长时间内报告？向谁报告？",
    "Who must approve deleting a ledger, and what does ledger FY2024 hold?",
)


@dataclass(frozen=True)
class Options:
    model: str = "llama-3-8b"
    embedding_model: str = "all-minilm-l6-v2"
    qdrant: str = ".harness/rag/qdrant"
    reindex: bool = False
    max_tokens: int = 96


@dataclass
class Answer:
    number: int
    question: str
    answer: str
    sources: list[dict[str, Any]]
    tool: ToolResult | None


@dataclass
class Run:
    session: str
    collection: str
    chunks: int
    embedded: int  # chunks embedded in this run (0 when the index was already there)
    answers: list[Answer] = field(default_factory=list)


def chat_model(harness: Harness, options: Options) -> ChatOpenAI:
    """ChatOpenAI on the Harness's OpenAI front door: the agent's certificate carried by the
    HTTP clients, the user's token as the API key, the session in every request's headers."""
    tls = harness.tls()
    return ChatOpenAI(
        model=options.model,
        base_url=harness.openai_base_url,
        api_key=harness.token,
        temperature=0,
        max_tokens=options.max_tokens,
        max_retries=1,
        timeout=120,
        default_headers={SESSION_HEADER: harness.session},
        http_client=openai.DefaultHttpxClient(verify=tls),
        http_async_client=openai.DefaultAsyncHttpxClient(verify=tls),
    )


async def ingest(
    index: PolicyIndex, embeddings: HarnessEmbeddings, chunks: Sequence[Chunk], force: bool
) -> int:
    """Embeds every chunk through the Harness (steps `ingest`, `ingest.2`, ...) and stores them,
    unless the index of these documents and this model is already there."""
    if not force and index.exists() and index.count() == len(chunks):
        return 0
    vectors = await embeddings.embed([c.text for c in chunks], "ingest")
    index.create(len(vectors[0]))
    index.add(chunks, vectors)
    return len(chunks)


def sources(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"n": n, "ref": hit.chunk.ref, "title": hit.chunk.title, "score": round(score, 3)}
        for n, (score, hit) in enumerate(state.get("ranked", []), 1)
    ]


async def run_agent(harness: Harness, questions: Sequence[str], options: Options) -> Run:
    chunks = load_chunks()
    collection = f"policies-{fingerprint(chunks, options.embedding_model)}"
    client = open_client(options.qdrant)
    embeddings = HarnessEmbeddings(harness, options.embedding_model)
    try:
        index = PolicyIndex(client, collection)
        run = Run(
            harness.session, collection, len(chunks), await ingest(index, embeddings, chunks, options.reindex)
        )
        graph = build_graph(AgentParts(harness, index, embeddings, chat_model(harness, options)))
        for number, question in enumerate(questions, 1):
            state = await graph.ainvoke({"number": number, "question": question, "tool": None})
            run.answers.append(Answer(number, question, state["answer"], sources(state), state.get("tool")))
        return run
    finally:
        await embeddings.close()
        client.close()


def report(run: Run) -> str:
    """What a person reads: each answer with its sources, and where to see the run's lineage."""
    calls = -(-run.embedded // EMBED_BATCH)
    lines = [
        f"session {run.session}: index {run.collection}, {run.chunks} chunks"
        + (f" (embedded through the Harness in {calls} calls)" if run.embedded else " (already indexed)")
    ]
    for a in run.answers:
        lines += ["", f"Q{a.number}: {a.question}", f"A{a.number}: {a.answer.strip()}"]
        if a.tool is not None:
            verdict = "ok" if a.tool.ok else "refused"
            lines.append(f"  tool {a.tool.tool} {a.tool.arguments} ({verdict}): {a.tool.text[:200]}")
        lines.append("  sources:" if a.sources else "  sources: (none matched)")
        lines += [f"    [{s['n']}] {s['title']} ({s['ref']}, score {s['score']})" for s in a.sources]
    lines += ["", f"lineage: harness audit lineage --session {run.session}"]
    return "\n".join(lines)
