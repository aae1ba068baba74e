"""Tool calling through the OpenAI front door (real Envoy with mTLS, the official `openai` SDK,
the router's real core over the engine simulator): the tools reach the model in its family's
chat format, its call comes back as `tool_calls` (whole and streamed), and the tool's result
goes back to the model on the next turn."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import openai
import pytest

from tests.helpers.router_fakes import MODEL
from tests.integration.test_openai_frontdoor import MESSAGES, front  # noqa: F401 (the fixture)

pytestmark = pytest.mark.asyncio(loop_scope="module")
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_ledger",
            "description": "Read one account of the general ledger",
            "parameters": {
                "type": "object",
                "properties": {"account": {"type": "string"}, "year": {"type": "integer"}},
                "required": ["account", "year"],
            },
        },
    },
    {"type": "function", "function": {"name": "close_ledger", "parameters": {"type": "object"}}},
]


@pytest.fixture
def llama(front):  # noqa: F811
    front.registry.family = "llama-3"  # the catalog says which chat template the model takes
    yield front
    front.registry.family = ""


async def test_a_tool_call_comes_back_and_its_result_goes_to_the_model(llama):
    async with llama.client() as client:
        first = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=64, temperature=0
        )
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        [call] = choice.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name == "read_ledger"
        assert json.loads(call.function.arguments) == {"account": "sample", "year": 1}
        history = [
            *MESSAGES,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"balance": 1200}'},
        ]
        second = await client.chat.completions.create(
            model=MODEL, messages=history, tools=TOOLS, max_tokens=6, temperature=0
        )
    assert second.choices[0].finish_reason == "length" and second.choices[0].message.content
    assert not second.choices[0].message.tool_calls


async def test_a_streamed_tool_call_as_openai_streams_it(llama):
    async with llama.client() as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=64, stream=True,
            tool_choice={"type": "function", "function": {"name": "close_ledger"}},
        )  # fmt: skip
        chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert not "".join(c.choices[0].delta.content or "" for c in chunks)  # the call is not text
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert [d.index for d in deltas] == [0] and deltas[0].function.name == "close_ledger"
    assert json.loads(deltas[0].function.arguments) == {}
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["tool_calls"]


async def test_tool_choice_none_answers_in_text(llama):
    async with llama.client() as client:
        answer = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="none", max_tokens=4
        )
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls


async def test_a_model_family_without_a_tool_format_refuses_tools(front):  # noqa: F811
    async with front.client() as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS)
    assert "has no tool-call format" in refused.value.message
    async with front.client() as client:
        with pytest.raises(openai.BadRequestError) as unknown:
            await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, tools=TOOLS,
                tool_choice={"type": "function", "function": {"name": "drop_tables"}},
            )  # fmt: skip
    assert unknown.value.body["param"] == "tool_choice"


async def test_the_readme_snippets_run_as_printed(llama):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()

    def block(marker: str) -> str:
        text = readme.split(f"<!-- {marker} -->", 1)[1].split(f"<!-- /{marker} -->", 1)[0]
        return text.split("```python\n", 1)[1].rsplit("```", 1)[0]

    leaf = llama.certs.agent("a1")
    env = {
        **os.environ, "HARNESS_CA": str(llama.certs.ca_cert), "HARNESS_CERT": str(leaf.cert),
        "HARNESS_KEY": str(leaf.key), "HARNESS_OPENAI_BASE_URL": llama.base_url, "HARNESS_TOKEN": llama.token,
    }  # fmt: skip
    code = block("openai-snippet") + block("openai-tools-snippet")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )  # the servers run on this loop: wait for the snippet without blocking it
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    lines = [line for line in out.decode().splitlines() if line.strip()]
    assert len(lines) == 4, lines  # the answer, the streamed answer, LangChain's, the answer after the tool
