"""Tool calling through the OpenAI front door (real Envoy with mTLS, the official `openai` SDK,
the router's real core over the engine simulator): the tools reach the model in its family's
chat format, its call comes back as `tool_calls` (whole and streamed), and the tool's result
goes back to the model on the next turn; the same when the engine speaks the OpenAI protocol
(the simulator as vLLM)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import httpx2
import openai
import pytest
import pytest_asyncio
from langchain_openai import ChatOpenAI
from openai.lib.streaming.chat import ChatCompletionStreamState

from services.common.openai_tool_calls import MAX_SCHEMA_DEPTH, nested_deeper
from services.enginesim.testing import start_enginesim
from services.router.engine import OPENAI
from services.router.openai_engine import OpenAIEngine
from tests.helpers.router_fakes import MODEL
from tests.integration.test_openai_frontdoor import MESSAGES, front  # noqa: F401 (the fixture)
from tests.integration.test_router_hot_path import endpoint

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
        assert json.loads(call.function.arguments) == {"account": "policy", "year": 1}
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


@pytest.fixture(params=["llama-3", "qwen2.5", "mistral"])
def family(front, request):  # noqa: F811
    front.registry.family = request.param  # the simulator answers in the family's call format
    yield front
    front.registry.family = ""


async def _stream(front, **kw) -> list:  # noqa: F811
    async with front.client() as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=64, stream=True, **kw
        )
        return [c async for c in stream]


async def test_a_streamed_tool_call_as_openai_streams_it(family):
    chunks = await _stream(family, tool_choice={"type": "function", "function": {"name": "read_ledger"}})
    assert chunks[0].choices[0].delta.role == "assistant"
    assert not "".join(c.choices[0].delta.content or "" for c in chunks)  # the call is not text
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    head, *fragments = deltas
    # OpenAI's shape: a first piece with the id, type and name, then argument fragments by index
    assert head.index == 0 and head.id.startswith("call_") and head.type == "function"
    assert head.function.name == "read_ledger" and head.function.arguments == ""
    assert len(fragments) > 3  # the arguments stream as the model writes them
    assert all(
        d.index == 0 and d.id is None and d.type is None and d.function.name is None for d in fragments
    )
    arguments = "".join(d.function.arguments for d in fragments)
    assert json.loads(arguments) == {"account": "policy", "year": 1}
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["tool_calls"]
    # what the SDK's own stream accumulation makes of it
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(chunk)
    [call] = state.get_final_completion().choices[0].message.tool_calls
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        head.id, "read_ledger", {"account": "policy", "year": 1},
    )  # fmt: skip


BOTH = [{"role": "user", "content": "Call read_ledger, then close_ledger"}]


async def _calls(front, stream: bool, **kw) -> list[tuple[int, str, dict]]:  # noqa: F811
    async with front.client() as client:
        answer = await client.chat.completions.create(
            model=MODEL, messages=BOTH, tools=TOOLS, max_tokens=128, stream=stream, **kw
        )
        if not stream:
            message = answer.choices[0].message
            assert answer.choices[0].finish_reason == "tool_calls" and not message.content
            return [
                (i, c.function.name, json.loads(c.function.arguments))
                for i, c in enumerate(message.tool_calls)
            ]
        state = ChatCompletionStreamState()
        async for chunk in answer:
            state.handle_chunk(chunk)
    final = state.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls" and not final.message.content
    return [(c.index, c.function.name, json.loads(c.function.arguments)) for c in final.message.tool_calls]


@pytest.mark.parametrize("stream", [False, True])
async def test_parallel_tool_calls_false_keeps_only_the_first_call(family, stream):
    both = [(0, "read_ledger", {"account": "sample", "year": 1}), (1, "close_ledger", {})]
    assert await _calls(family, stream) == both  # absent: every call
    assert await _calls(family, stream, parallel_tool_calls=True) == both
    assert await _calls(family, stream, parallel_tool_calls=False) == both[:1]


async def test_langchain_accumulates_the_streamed_calls(llama):
    llm = ChatOpenAI(
        model=MODEL, base_url=llama.base_url, api_key=llama.token, max_tokens=128, max_retries=0,
        http_async_client=httpx2.AsyncClient(verify=llama.tls()),
    ).bind_tools(TOOLS)  # fmt: skip
    message = None
    async for chunk in llm.astream(BOTH[0]["content"]):
        message = chunk if message is None else message + chunk
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [
        ("read_ledger", {"account": "sample", "year": 1}), ("close_ledger", {}),
    ]  # fmt: skip
    assert all(c["id"].startswith("call_") for c in message.tool_calls)


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


async def test_a_tool_schema_past_the_bounds_or_not_an_object_is_400_naming_the_tool(llama):
    nested: list = []
    for _ in range(MAX_SCHEMA_DEPTH - 3):  # one level past the limit, well within the context
        nested = [nested]
    too_deep = {"type": "object", "properties": {"x": {"type": "array", "default": nested}}}
    assert nested_deeper(too_deep, MAX_SCHEMA_DEPTH) and not nested_deeper(too_deep, MAX_SCHEMA_DEPTH + 1)
    for parameters, says in ((too_deep, f"{MAX_SCHEMA_DEPTH} levels deep"), ({"type": "string"}, '"object"')):
        tools = [*TOOLS, {"type": "function", "function": {"name": "probe", "parameters": parameters}}]
        async with llama.client() as client:  # a family with a tool format: the tools would be taken
            with pytest.raises(openai.BadRequestError) as refused:
                await client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=tools)
        assert refused.value.status_code == 400
        error = refused.value.body
        assert (error["type"], error["param"]) == ("invalid_request_error", "tools[2].function.parameters")
        assert "tools[2]" in error["message"] and says in error["message"]


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


@pytest_asyncio.fixture(loop_scope="module")
async def vllm(llama):
    """The front door's router with one endpoint, an OpenAI-protocol engine: the simulator as vLLM."""
    sim = await start_enginesim(time_scale=1000.0, protocol="openai")
    engine = llama.router.dispatcher.engines[OPENAI] = OpenAIEngine()
    llama.view.apply([endpoint("vllm-0", sim.openai_url, kind="openai")])
    yield llama, sim
    llama.view.apply([endpoint("sim-0", llama.sim_address)])
    del llama.router.dispatcher.engines[OPENAI]
    await engine.close()
    await sim.stop()


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calls_come_back_from_an_openai_protocol_engine(vllm, stream):
    front, sim = vllm  # noqa: F811
    engines = sim.server.sim.engines().values()
    before = sum(e.stats.success for e in engines)
    both = [(0, "read_ledger", {"account": "sample", "year": 1}), (1, "close_ledger", {})]
    assert await _calls(front, stream) == both
    assert await _calls(front, stream, parallel_tool_calls=False) == both[:1]
    assert sum(e.stats.success for e in engines) == before + 2  # the OpenAI-protocol engine answered
