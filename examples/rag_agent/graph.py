"""The agent's graph (LangGraph): retrieve -> filter -> rerank -> [ledger lookup] -> generate.

Each node is a step of the run: the calls it makes to the Harness carry the step id
`q<N>-<node>`, so the audit lineage of the session lists every question's retrieval, tool call
and generation under its own step.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypedDict

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, StateGraph

from . import lexical
from .corpus import language
from .harness_calls import HarnessEmbeddings, ToolResult, call_tool
from .settings import Harness
from .store import Hit, PolicyIndex

RETRIEVE_LIMIT = 12  # candidates from each of the dense and the lexical search
PER_DOCUMENT = 2  # chunks kept per document, so one long policy cannot fill the context
DENSE_FLOOR = 0.35  # cosine below which a chunk with no question term in it is dropped
TOP_N = 3  # sources given to the model
LEDGER = re.compile(r"\bledger\s+(FY\d{4})\b|\b(FY\d{4})\s+ledger\b|(FY\d{4})\s*总账|总账\s*(FY\d{4})", re.I)
SYSTEM = (
    "You answer employees' questions about company policy. Use only the numbered sources and "
    "the ledger lookup, cite sources as [n], and say so when they do not answer the question. "
    "Answer in the language of the question."
)


class RunState(TypedDict, total=False):
    number: int  # the question's number in the run: steps are q<number>-<node>
    question: str
    hits: list[Hit]
    kept: list[Hit]
    ranked: list[tuple[float, Hit]]
    tool: ToolResult | None
    answer: str


@dataclass
class AgentParts:
    harness: Harness
    index: PolicyIndex
    embeddings: HarnessEmbeddings
    llm: ChatOpenAI
    # How a tool is called (harness_calls.call_tool: MCP through the Harness); tests pass a fake.
    tool: Callable[[Harness, str, str, dict[str, Any]], Awaitable[ToolResult]] = call_tool


def step(state: RunState, node: str) -> str:
    return f"q{state['number']}-{node}"


def ledger_named(question: str) -> str | None:
    """The ledger a question asks about ("ledger FY2024", "FY2024 总账"), if any."""
    match = LEDGER.search(question)
    return next((g.upper() for g in match.groups() if g), None) if match else None


def filter_hits(state: RunState) -> RunState:
    """Drop chunks that neither share a term with the question nor sit close to it in the
    embedding space; keep at most PER_DOCUMENT chunks of each document."""
    kept, per_doc = [], {}
    for hit in state["hits"]:
        relevant = lexical.coverage(state["question"], hit.chunk.text) > 0 or hit.dense_score >= DENSE_FLOOR
        if relevant and per_doc.get(hit.chunk.doc, 0) < PER_DOCUMENT:
            per_doc[hit.chunk.doc] = per_doc.get(hit.chunk.doc, 0) + 1
            kept.append(hit)
    return {"kept": kept}


def rerank(state: RunState) -> RunState:
    """Order by how much of the question a chunk covers, then by fused retrieval rank; a
    chunk in the question's language gets a small lift (an answer quoting it reads better)."""
    best = max((h.fused for h in state["kept"]), default=1.0) or 1.0
    lang = language(state["question"])
    scored = [
        (
            0.6 * lexical.coverage(state["question"], h.chunk.text)
            + 0.3 * h.fused / best
            + (0.1 if h.chunk.lang == lang else 0.0),
            h,
        )
        for h in state["kept"]
    ]
    scored.sort(key=lambda pair: pair[0], reverse=True)
    return {"ranked": scored[:TOP_N]}


def build_graph(parts: AgentParts) -> Any:
    async def retrieve(state: RunState) -> RunState:
        [vector] = await parts.embeddings.embed([state["question"]], step(state, "retrieve"))
        return {"hits": parts.index.search(state["question"], vector, RETRIEVE_LIMIT)}

    async def lookup_ledger(state: RunState) -> RunState:
        ledger = ledger_named(state["question"])
        return {
            "tool": await parts.tool(parts.harness, step(state, "tool"), "ledger.read", {"ledger": ledger})
        }

    async def generate(state: RunState) -> RunState:
        reply = await parts.llm.ainvoke(
            [SystemMessage(SYSTEM), HumanMessage(prompt(state))],
            extra_headers=parts.harness.headers(step(state, "generate")),
        )
        return {"answer": str(reply.content)}

    graph = StateGraph(RunState)
    graph.add_node("retrieve", retrieve)
    graph.add_node("filter", filter_hits)
    graph.add_node("rerank", rerank)
    graph.add_node("lookup_ledger", lookup_ledger)
    graph.add_node("generate", generate)
    graph.add_edge(START, "retrieve")
    graph.add_edge("retrieve", "filter")
    graph.add_edge("filter", "rerank")
    graph.add_conditional_edges(
        "rerank",
        lambda s: "lookup_ledger" if ledger_named(s["question"]) else "generate",
        ["lookup_ledger", "generate"],
    )
    graph.add_edge("lookup_ledger", "generate")
    graph.add_edge("generate", END)
    return graph.compile()


def prompt(state: RunState) -> str:
    """The sources (numbered as the answer cites them), the tool's result, then the question."""
    lines = ["Sources:"]
    for n, (_, hit) in enumerate(state.get("ranked", []), 1):
        lines.append(f"[{n}] {hit.chunk.text}")
    if len(lines) == 1:
        lines.append("(no policy matched the question)")
    tool = state.get("tool")
    if tool is not None:
        verdict = "result" if tool.ok else "refused"
        lines.append(f"\nLedger lookup ({tool.tool} {tool.arguments}, {verdict}): {tool.text}")
    lines.append(f"\nQuestion: {state['question']}")
    return "\n".join(lines)
