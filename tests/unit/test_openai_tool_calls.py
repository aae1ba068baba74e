"""The tool JSON both OpenAI-compatible servers write (the router's front door and the engine
simulator build it with the same functions), as OpenAI writes it, keys in OpenAI's order: the
calls an answer makes, and the function definitions a request offers."""

from __future__ import annotations

import json

import pytest

from services.common.openai_tool_calls import (
    TOOL_JSON_START,
    function_of,
    function_tool,
    tool_call,
    tool_call_fragment,
    tool_call_start,
)
from services.enginesim.openai_tools import FunctionTool
from services.router.chat import ToolCallDelta, ToolCallOut, ToolSpec


def compact(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"))


def test_a_whole_call_and_a_streamed_calls_pieces_as_openai_writes_them():
    assert compact(tool_call("call_1", "lookup", '{"id":"7"}')) == (
        '{"id":"call_1","type":"function","function":{"name":"lookup","arguments":"{\\"id\\":\\"7\\"}"}}'
    )
    assert compact(tool_call_start(2, "call_1", "lookup")) == (
        '{"index":2,"id":"call_1","type":"function","function":{"name":"lookup","arguments":""}}'
    )
    assert compact(tool_call_fragment(2, '{"id"')) == '{"index":2,"function":{"arguments":"{\\"id\\""}}'


def test_the_routers_call_types_render_through_them():
    assert ToolCallOut("lookup", "{}", "call_1").as_openai() == tool_call("call_1", "lookup", "{}")
    assert ToolCallDelta(0, "", "call_1", "lookup").as_openai() == tool_call_start(0, "call_1", "lookup")
    assert ToolCallDelta(0, '{"a"').as_openai() == tool_call_fragment(0, '{"a"')


def test_a_function_definition_as_openai_writes_it():
    assert compact(function_tool("f")) == '{"type":"function","function":{"name":"f"}}'
    full = function_tool("f", "Find it", {"type": "object"}, True)
    assert compact(full) == (
        '{"type":"function","function":{"name":"f","description":"Find it",'
        '"parameters":{"type":"object"},"strict":true}}'
    )
    assert json.dumps(full).startswith(TOOL_JSON_START)  # where the simulator finds it in a prompt
    assert function_of(json.loads(json.dumps(full))) == full["function"]
    assert function_of({"type": "function", "function": {"description": "no name"}}) is None


def test_the_router_prints_its_tools_as_before():
    assert compact(ToolSpec("f").as_json()) == (
        '{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{}}}}'
    )
    spec = ToolSpec("f", "Find it", {"type": "object", "required": ["id"]})
    assert compact(spec.as_json()) == (
        '{"type":"function","function":{"name":"f","description":"Find it",'
        '"parameters":{"type":"object","required":["id"]}}}'
    )


@pytest.mark.parametrize(
    "function",
    [{"name": "f"}, {"name": "f", "description": "", "parameters": {"type": "object"}, "strict": False}],
)
def test_the_simulator_keeps_a_definition_as_sent(function):
    tool = FunctionTool.model_validate({"type": "function", "function": function})
    assert tool.as_openai() == {"type": "function", "function": function}
    assert compact(tool.as_openai()) == compact(tool.model_dump(exclude_none=True))
