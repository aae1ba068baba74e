"""The simulator answers a prompt that offers functions with calls, in the format of the chat
template that rendered it (Llama 3.1, Hermes/Qwen ChatML, Mistral), and a prompt whose last turn
is a tool result with text."""

from __future__ import annotations

import json

import pytest

from services.enginesim.sequence import GenerationRequest
from services.enginesim.tool_calls import OFFER, ArgumentValues, choose_calls, tool_call_script
from services.router.chat import ChatMessage, ToolCallOut, ToolSpec, template_for
from tests.unit.test_enginesim_engine import make_engine  # noqa: F401 (the fixture)

FUNCTION = {
    "type": "function",
    "function": {
        "name": "read_ledger",
        "parameters": {
            "type": "object",
            "properties": {
                "account": {"type": "string"},
                "kind": {"enum": ["cash", "debt"]},
                "n": {"type": "integer"},
            },
            "required": ["account", "kind"],
        },
    },
}


def header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


OFFERED = f"{header('user')}{OFFER} ...\n\n{json.dumps(FUNCTION)}\n\nRead account 7<|eot_id|>"


def test_a_user_turn_offering_functions_gets_a_call_of_the_first():
    script = tool_call_script(OFFERED + header("assistant"))
    assert json.loads(script) == {"name": "read_ledger", "parameters": {"account": "Read", "kind": "cash"}}


def test_after_a_tool_result_or_without_functions_the_answer_is_text():
    after_result = OFFERED + header("assistant") + "{}<|eot_id|>" + header("ipython") + "42<|eot_id|>"
    assert tool_call_script(after_result + header("assistant")) is None
    assert tool_call_script(header("user") + "hello<|eot_id|>" + header("assistant")) is None


async def test_the_engine_streams_the_call_and_stops(make_engine):  # noqa: F811
    engine = make_engine()
    seq = engine.submit(GenerationRequest(OFFERED + header("assistant"), max_tokens=200))
    chunks = [c async for c in seq.stream()]
    assert json.loads(seq.text)["name"] == "read_ledger"
    assert chunks[-1].final and chunks[-1].finish_reason == "stop" and len(chunks) > 5


TOOLS = (
    ToolSpec("read_ledger", "", FUNCTION["function"]["parameters"]),
    ToolSpec("close_ledger", "", {"type": "object", "properties": {}}),
)


@pytest.mark.parametrize("family", ["llama-3", "qwen2.5", "mistral"])
def test_each_family_gets_calls_in_its_own_format_which_its_template_reads(family):
    template = template_for(family)
    ask = (ChatMessage("system", "Be brief."), ChatMessage("user", "Read account 7"))
    script = tool_call_script(template.render(ask, TOOLS))
    assert script is not None and script.startswith(FORMAT_START[family])
    calls = template.parse(script, TOOLS).tool_calls
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("read_ledger", {"account": "Read", "kind": "cash"})
    ]
    # the functions the user's last turn names, in the order offered
    both = (ChatMessage("user", "close_ledger, after read_ledger"),)
    calls = template.parse(tool_call_script(template.render(both, TOOLS)) or "", TOOLS).tool_calls
    assert [c.name for c in calls] == ["read_ledger", "close_ledger"]
    # after the tool's result, text; without tools, text
    result = (
        *ask,
        ChatMessage("assistant", "", tool_calls=(ToolCallOut("read_ledger", "{}", "call_1"),)),
        ChatMessage("tool", "42", tool_call_id="call_1"),
    )
    assert tool_call_script(template.render(result, TOOLS)) is None
    assert tool_call_script(template.render(ask)) is None


FORMAT_START = {"llama-3": '{"name": ', "qwen2.5": "<tool_call>\n{", "mistral": "[TOOL_CALLS] [{"}


def test_arguments_follow_the_schema_with_the_users_words_and_numbers():
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 3},
            "note": {"type": "string"},
            "days": {"type": "integer"},
            "ratio": {"type": ["null", "number"]},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "hourly": {"type": "boolean"},
            "version": {"const": 2},
            "where": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "tags": {"type": "array", "items": {"type": "integer"}},
            "detail": {"type": "object", "properties": {"deep": {"type": "boolean"}}, "required": ["deep"]},
        },
    }
    said = 'Forecast "New York" in fahrenheit for 3 days at 0.5, not hourly'
    assert ArgumentValues(said, frozenset(["celsius", "fahrenheit"])).arguments(schema) == {
        "city": "New", "note": "hourly", "days": 3, "ratio": 0.5, "unit": "fahrenheit", "hourly": False,
        "version": 2, "where": "days", "tags": [3], "detail": {"deep": False},
    }  # fmt: skip
    assert ArgumentValues("").arguments(schema)["city"] == "sam"  # nothing said: the type's sample
    # the names of the functions, parameters and enum values are not taken for values
    [call] = choose_calls(
        [{"name": "get_weather", "parameters": schema}], "get_weather days in Oslo, celsius"
    )
    assert call["arguments"]["city"] == "Osl" and call["arguments"]["unit"] == "celsius"
