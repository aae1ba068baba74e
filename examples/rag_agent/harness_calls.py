"""The agent's calls to the Harness that are not the chat model: embeddings and MCP tools.

Both go through the same Envoy listener as ChatOpenAI, with the agent's certificate, the user's
token and the run's lineage headers; the Harness applies the agent's policy, PII redaction,
budgets, audit and usage to each of them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx2  # the mcp SDK's HTTP client
import openai
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from .settings import Harness

EMBED_BATCH = 16  # inputs per POST /v1/embeddings
MAX_TOOL_TEXT = 4000  # characters of a tool result put before the model


class HarnessEmbeddings:
    """`POST /v1/embeddings` through the Harness (the OpenAI SDK, floats rather than base64)."""

    def __init__(self, harness: Harness, model: str) -> None:
        self.harness, self.model = harness, model
        self.client = openai.AsyncOpenAI(
            base_url=harness.openai_base_url,
            api_key=harness.token,
            http_client=openai.DefaultAsyncHttpxClient(verify=harness.tls()),
            max_retries=1,
            timeout=120,
        )

    async def embed(self, texts: Sequence[str], step: str) -> list[list[float]]:
        """One vector per text, in order; batches of EMBED_BATCH are steps `step`, `step.2`, ..."""
        vectors: list[list[float]] = []
        for n, start in enumerate(range(0, len(texts), EMBED_BATCH)):
            batch = list(texts[start : start + EMBED_BATCH])
            answer = await self.client.embeddings.create(
                model=self.model,
                input=batch,
                encoding_format="float",
                extra_headers=self.harness.headers(step if n == 0 else f"{step}.{n + 1}"),
            )
            ordered = sorted(answer.data, key=lambda d: d.index)
            if len(ordered) != len(batch):
                raise RuntimeError(f"asked for {len(batch)} embeddings, got {len(ordered)}")
            vectors += [list(d.embedding) for d in ordered]
        return vectors

    async def close(self) -> None:
        await self.client.close()


@dataclass(frozen=True)
class ToolResult:
    tool: str
    arguments: dict[str, Any]
    ok: bool
    text: str  # the result as JSON, or the Harness's reason for a refusal


async def call_tool(harness: Harness, step: str, tool: str, arguments: dict[str, Any]) -> ToolResult:
    """One `tools/call` over the Harness's MCP gateway. A refusal (policy, approval, budget) is a
    tool error with the reason, not an exception: the agent answers without the tool then."""
    headers = {"authorization": f"Bearer {harness.token}", **harness.headers(step)}
    async with httpx2.AsyncClient(verify=harness.tls(), headers=headers, timeout=120) as http:
        async with streamable_http_client(harness.mcp_url, http_client=http) as streams:
            async with ClientSession(*streams) as mcp:
                await mcp.initialize()
                result = await mcp.call_tool(tool, arguments)
    if result.structured_content is not None:
        text = json.dumps(result.structured_content, ensure_ascii=False, sort_keys=True)
    else:
        text = " ".join(getattr(part, "text", "") for part in result.content)
    return ToolResult(tool, arguments, not result.is_error, text[:MAX_TOOL_TEXT])
