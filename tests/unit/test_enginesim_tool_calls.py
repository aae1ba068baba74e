"""The simulator answers a Llama 3 prompt that offers functions with a call, as Llama 3.1 writes
one, and a prompt whose last turn is a tool result with text."""

from __future__ import annotations

import json

from services.enginesim.sequence import GenerationRequest
from services.enginesim.tool_calls import OFFER, tool_call_script
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
    assert json.loads(script) == {"name": "read_ledger", "parameters": {"account": "sample", "kind": "cash"}}


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
