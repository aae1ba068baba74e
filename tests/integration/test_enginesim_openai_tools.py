"""Tool calling on the engine simulator's OpenAI chat API, over real HTTP with the official
`openai` SDK: calls come back as vLLM with a tool parser returns them (whole and streamed), with
arguments built from each function's schema and the user's words; tool_choice and
parallel_tool_calls are honoured; bad tools are 400s naming the field."""

from __future__ import annotations

import json

import openai
import pytest

from services.common.openai_tool_calls import MAX_SCHEMA_BYTES, MAX_SCHEMA_DEPTH, MAX_TOOLS
from services.enginesim.testing import start_enginesim

MODEL = "llama-3-8b-instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The forecast for a place",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "hourly": {"type": "boolean"},
            },
            "required": ["location", "days", "unit"],
        },
    },
}
CLOSE = {"type": "function", "function": {"name": "close_ledger", "parameters": {"type": "object"}}}
TOOLS = [WEATHER, CLOSE]
ASK = [{"role": "user", "content": "The weather in Paris for 3 days, in fahrenheit"}]
EXPECTED = {"location": "Paris", "days": 3, "unit": "fahrenheit"}


@pytest.fixture
async def client():
    sim = await start_enginesim(time_scale=500.0, load=(MODEL,), protocol="openai")
    client = openai.AsyncOpenAI(base_url=f"{sim.openai_url}/v1", api_key="unused", max_retries=0)
    yield client
    await client.close()
    await sim.stop()


async def calls_of(client, stream: bool = False, **kw) -> tuple[list[tuple[int, str, dict]], str]:
    kw = {"model": MODEL, "messages": ASK, "tools": TOOLS, **kw}
    if not stream:
        choice = (await client.chat.completions.create(**kw)).choices[0]
        calls = choice.message.tool_calls or []
        return [(i, c.function.name, json.loads(c.function.arguments)) for i, c in enumerate(calls)], (
            choice.finish_reason
        )
    calls: dict[int, list[str]] = {}  # index: [name, arguments], as a client accumulates them
    reason = ""
    async for chunk in await client.chat.completions.create(stream=True, **kw):
        reason = chunk.choices[0].finish_reason or reason
        for d in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(d.index, ["", ""])
            call[0] += d.function.name or ""
            call[1] += d.function.arguments or ""
    return [(i, name, json.loads(arguments)) for i, (name, arguments) in sorted(calls.items())], reason


async def test_a_call_comes_back_whole_with_arguments_from_the_schema_and_the_words(client):
    answer = await client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("chatcmpl-tool-")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == EXPECTED
    assert answer.usage.completion_tokens > 10  # the arguments were generated token by token
    again = await client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS)
    assert again.choices[0].message.tool_calls[0].function.arguments == call.function.arguments


async def test_a_streamed_call_as_openai_streams_it(client):
    stream = await client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    head, *fragments = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert head.index == 0 and head.id.startswith("chatcmpl-tool-") and head.type == "function"
    assert head.function.name == "get_weather" and head.function.arguments == ""
    assert len(fragments) > 10 and all(
        d.index == 0 and d.id is None and d.function.name is None for d in fragments
    )
    assert json.loads("".join(d.function.arguments for d in fragments)) == EXPECTED
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 10


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_choice_and_parallel_tool_calls(client, stream):
    both = [{"role": "user", "content": "Call close_ledger, then get_weather for Oslo"}]
    calls, reason = await calls_of(client, stream, messages=both)
    assert reason == "tool_calls"
    assert calls == [
        (0, "get_weather", {"location": "Oslo", "days": 1, "unit": "celsius"}),
        (1, "close_ledger", {}),
    ]
    assert (await calls_of(client, stream, messages=both, parallel_tool_calls=False))[0] == calls[:1]
    named = {"type": "function", "function": {"name": "close_ledger"}}
    assert await calls_of(client, stream, tool_choice=named) == ([(0, "close_ledger", {})], "tool_calls")
    assert await calls_of(client, stream, tool_choice="none", max_tokens=4) == ([], "length")
    result = [
        *ASK,
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]  # fmt: skip
    assert await calls_of(client, stream, messages=result, max_tokens=4) == ([], "length")  # auto: text
    required, _ = await calls_of(client, stream, messages=result, tool_choice="required")
    assert required == [(0, "get_weather", EXPECTED)]


async def test_max_tokens_cuts_a_call_short_with_length(client):
    whole = await client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=5)
    arguments = whole.choices[0].message.tool_calls[0].function.arguments
    assert whole.choices[0].finish_reason == "length"
    assert json.dumps(EXPECTED).startswith(arguments) and len(arguments) < len(json.dumps(EXPECTED))
    stream = await client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, max_tokens=5, stream=True
    )
    chunks = [c async for c in stream]
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert "".join(d.function.arguments or "" for d in deltas) == arguments
    assert chunks[-1].choices[0].finish_reason == "length"


def _deep(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def _tool(name: str = "f", parameters: dict | None = None) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": parameters or {"type": "object"}}}


BAD = [
    ({"tool_choice": "required"}, "tool_choice", "`tools` must be set"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "nope"),
    ({"tools": []}, "tools", "at least 1"),
    ({"tools": [_tool()] * (MAX_TOOLS + 1)}, "tools", f"at most {MAX_TOOLS}"),
    ({"tools": [_tool(), _tool()]}, "tools", "distinct"),
    ({"tools": [_tool("drop tables")]}, "tools.0.function.name", "pattern"),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools.0.type", "function"),
    ({"tools": [_tool(parameters={"type": "string"})]}, "tools.0.function.parameters", "object"),
    ({"tools": [_tool(parameters=_deep(MAX_SCHEMA_DEPTH))]}, "tools.0.function.parameters", "levels deep"),
    ({"tools": [_tool(parameters={"type": "object", "description": "x" * MAX_SCHEMA_BYTES})]},
     "tools.0.function.parameters", "bytes"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "param", "words"), BAD, ids=[b[1] + "-" + b[2] for b in BAD])
async def test_bad_tools_are_400_naming_the_field(client, extra, param, words):
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(model=MODEL, messages=ASK, **extra)
    assert refused.value.status_code == 400
    assert refused.value.body["param"] == param and words in refused.value.body["message"]
