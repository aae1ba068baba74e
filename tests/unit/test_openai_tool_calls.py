"""The tool-call JSON both OpenAI-compatible servers send (the router's front door and the engine
simulator build it with the same functions), as OpenAI writes it, keys in OpenAI's order."""

from __future__ import annotations

import json

from services.common.openai_tool_calls import tool_call, tool_call_fragment, tool_call_start
from services.router.chat import ToolCallDelta, ToolCallOut


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
