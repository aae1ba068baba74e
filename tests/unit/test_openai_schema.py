"""OpenAI request bodies -> the router's GenerationInput, and every refusal naming its field."""

from __future__ import annotations

import json

import pytest

from services.common.openai_tool_calls import MAX_SCHEMA_BYTES, MAX_SCHEMA_DEPTH, nested_deeper
from services.router.chat import AUTO, NONE, ChatMessage, ToolChoice
from services.router.openai_http.schema import (
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_PAIRS,
    MAX_METADATA_VALUE_CHARS,
    MAX_PARTS,
    BadRequest,
    ChatCompletionRequest,
    CompletionRequest,
    chat_input,
    completion_input,
    parse,
)
from services.router.stages.admit import MAX_MESSAGES, MAX_OUTPUT_TOKENS


def chat(**body) -> bytes:
    return json.dumps(
        {"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}], **body}
    ).encode()


def test_chat_body_becomes_the_same_input_as_grpc_generate():
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Sum "}, {"type": "text", "text": "up"}]},
        {"role": "assistant", "content": "Sure."},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
    ]
    req = parse(
        ChatCompletionRequest, chat(messages=messages, max_completion_tokens=7, stop="END", seed=3, top_p=0.5)
    )
    inp = chat_input(req)
    assert inp.messages == (
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Sum up"),
        ChatMessage("assistant", "Sure."),
        ChatMessage("tool", "42", tool_call_id="c1"),
    )
    assert (inp.max_tokens, inp.stop, inp.seed, inp.top_p, inp.model) == (7, ("END",), 3, 0.5, "llama-3-8b")
    assert inp.temperature == 1.0  # OpenAI's default when the body leaves it out
    assert chat_input(parse(ChatCompletionRequest, chat(temperature=0))).temperature == 0


def test_completion_prompt_as_string_or_list_of_one():
    assert (
        completion_input(parse(CompletionRequest, b'{"model": "m", "prompt": ["Hello"]}')).prompt == "Hello"
    )
    with pytest.raises(BadRequest) as many:
        parse(CompletionRequest, b'{"model": "m", "prompt": ["a", "b"]}')
    assert many.value.param == "prompt"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b"[1, 2]", None, "invalid_json"),
        (b'{"model": "m", "messages": [', None, "invalid_json"),
        (
            json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(),
            "model",
            "missing_required_parameter",
        ),
        (chat(messages=[]), "messages", "invalid_value"),
        (chat(n=2), "n", "invalid_value"),
        (chat(seed=-1), "seed", "invalid_value"),
        (chat(temperature=2.5), "temperature", "invalid_value"),
        (chat(stop=["a", "b", "c", "d", "e"]), "stop", "invalid_value"),
        (chat(logprobs=True), "logprobs", "invalid_value"),
        (chat(functions=[]), "functions", "unknown_parameter"),
        (chat(messages=[{"role": "root", "content": "x"}]), "messages[0].role", "invalid_value"),
        (
            chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
            "messages[0].content[0].type",
            "invalid_value",
        ),
    ],
)
def test_bad_bodies_name_the_field(body, param, code):
    with pytest.raises(BadRequest) as bad:
        parse(ChatCompletionRequest, body)
    assert (bad.value.param, bad.value.error_code) == (param, code)
    assert bad.value.http_status == 400


@pytest.mark.parametrize("escape", ["\\ud800", "\\ud800 and more", "\\udc00", "\\ud800\\u0041"])
def test_a_lone_surrogate_is_refused_saying_what_is_wrong(escape):
    body = b'{"model": "m", "messages": [{"role": "user", "content": "%s"}]}' % escape.encode()
    with pytest.raises(BadRequest) as bad:
        parse(ChatCompletionRequest, body)
    assert bad.value.error_code == "invalid_json" and bad.value.http_status == 400
    assert "half of a surrogate pair" in bad.value.message and "lone surrogate" in bad.value.message
    paired = parse(ChatCompletionRequest, body.replace(escape.encode(), b"\\ud83d\\ude00"))
    assert paired.messages[0].content == "\U0001f600"


TOOLS = [
    {"type": "function", "function": {"name": "lookup", "description": "Find an account",
                                      "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "close"}},
]  # fmt: skip


def test_tools_tool_choice_and_a_tool_round_trip_reach_the_input():
    inp = chat_input(parse(ChatCompletionRequest, chat(tools=TOOLS)))
    assert [t.name for t in inp.tools] == ["lookup", "close"] and inp.tool_choice == ToolChoice(AUTO)
    assert inp.tools[0].parameters["properties"] == {"id": {"type": "string"}}
    named = {"type": "function", "function": {"name": "close"}}
    assert chat_input(parse(ChatCompletionRequest, chat(tools=TOOLS, tool_choice=named))).tool_choice == (
        ToolChoice(AUTO, "close")
    )
    assert (
        chat_input(parse(ChatCompletionRequest, chat(tools=TOOLS, tool_choice="none"))).tool_choice.mode
        == NONE
    )
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"id": "7"}'}}
    history = [
        {"role": "user", "content": "find 7"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"balance": 3}'},
    ]
    inp = chat_input(parse(ChatCompletionRequest, chat(messages=history, tools=TOOLS)))
    assert inp.messages[1].tool_calls[0].name == "lookup" and inp.messages[1].tool_calls[0].id == "call_1"
    assert inp.messages[2] == ChatMessage("tool", '{"balance": 3}', tool_call_id="call_1")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(tools=[{"type": "function", "function": {"name": "bad name"}}]), "tools[0].function.name"),
        (chat(tools=[{"type": "retrieval"}]), "tools[0].type"),
        (chat(tools=TOOLS, tool_choice="sometimes"), "tool_choice"),
        (chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
        (chat(tool_choice="required"), "tool_choice"),
        (chat(tools=[TOOLS[1], TOOLS[1]]), "tools"),
        (chat(messages=[{"role": "tool", "content": "x"}]), "messages[0].tool_call_id"),
        (
            chat(messages=[{"role": "assistant", "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]),
            "messages[0].tool_calls[0].function.arguments",
        ),
    ],
)  # fmt: skip
def test_bad_tools_name_the_field(body, param):
    with pytest.raises(BadRequest) as bad:
        chat_input(parse(ChatCompletionRequest, body))
    assert bad.value.param == param and bad.value.http_status == 400


def _levels_deep(levels: int) -> dict:
    """An object schema nesting `levels` objects and arrays (the top object is the first)."""
    inner: list = []
    for _ in range(levels - 3):  # the top object, its properties and the innermost array
        inner = [inner]
    return {"type": "object", "properties": {"x": inner}}


def _tools_with(parameters: dict) -> list[dict]:
    """Three tools; the last offers `parameters`."""
    return [*TOOLS, {"type": "function", "function": {"name": "probe", "parameters": parameters}}]


def test_a_schema_at_the_bounds_is_taken():
    at_depth = _levels_deep(MAX_SCHEMA_DEPTH)
    assert not nested_deeper(at_depth, MAX_SCHEMA_DEPTH) and nested_deeper(at_depth, MAX_SCHEMA_DEPTH - 1)
    padding = MAX_SCHEMA_BYTES - len(json.dumps({"type": "object", "description": ""}))
    at_size = {"type": "object", "description": "x" * padding}
    for schema in (at_depth, at_size):
        inp = chat_input(parse(ChatCompletionRequest, chat(tools=_tools_with(schema))))
        assert inp.tools[2].parameters == schema


@pytest.mark.parametrize(
    ("parameters", "limit"),
    [
        (_levels_deep(MAX_SCHEMA_DEPTH + 1), f"{MAX_SCHEMA_DEPTH} levels deep"),
        ({"type": "object", "description": "x" * MAX_SCHEMA_BYTES}, f"{MAX_SCHEMA_BYTES} bytes"),
    ],
    ids=["too-deep", "too-large"],
)
def test_a_schema_past_the_bounds_is_refused_naming_the_tool_and_the_limit(parameters, limit):
    with pytest.raises(BadRequest) as bad:
        chat_input(parse(ChatCompletionRequest, chat(tools=_tools_with(parameters))))
    assert (bad.value.param, bad.value.error_code, bad.value.http_status) == (
        "tools[2].function.parameters", "invalid_value", 400,
    )  # fmt: skip
    assert "tools[2]" in bad.value.message and limit in bad.value.message


@pytest.mark.parametrize("parameters", [{"type": "string"}, {"type": ["object", "null"]}])
def test_parameters_other_than_an_object_schema_are_refused_saying_what_is_taken(parameters):
    with pytest.raises(BadRequest) as bad:
        chat_input(parse(ChatCompletionRequest, chat(tools=_tools_with(parameters))))
    assert (bad.value.param, bad.value.http_status) == ("tools[2].function.parameters", 400)
    assert 'type "object" is accepted' in bad.value.message


@pytest.mark.parametrize("parameters", [{}, {"properties": {"id": {"type": "string"}}}])
def test_parameters_with_no_type_are_read_as_an_object_schema(parameters):
    inp = chat_input(parse(ChatCompletionRequest, chat(tools=_tools_with(parameters))))
    assert inp.tools[2].parameters == parameters


def pairs(n: int, key_chars: int = MAX_METADATA_KEY_CHARS, value_chars: int = 1) -> dict[str, str]:
    return {f"{i:0{key_chars}d}": "v" * value_chars for i in range(n)}


LIMITS = [
    (chat(metadata=pairs(MAX_METADATA_PAIRS + 1)), "metadata", f"at most {MAX_METADATA_PAIRS} items"),
    (chat(metadata=pairs(1, MAX_METADATA_KEY_CHARS + 1)), "metadata",
     f"Invalid key in 'metadata': String should have at most {MAX_METADATA_KEY_CHARS} characters"),
    (chat(metadata={"k": "v" * (MAX_METADATA_VALUE_CHARS + 1)}), "metadata.k",
     f"at most {MAX_METADATA_VALUE_CHARS} characters"),
    (chat(messages=[{"role": "user", "content": "x"}] * (MAX_MESSAGES + 1)), "messages",
     f"at most {MAX_MESSAGES} items"),
    (chat(max_tokens=MAX_OUTPUT_TOKENS + 1), "max_tokens", f"less than or equal to {MAX_OUTPUT_TOKENS}"),
    (chat(max_completion_tokens=MAX_OUTPUT_TOKENS + 1), "max_completion_tokens",
     f"less than or equal to {MAX_OUTPUT_TOKENS}"),
    (chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}] * (MAX_PARTS + 1)}]),
     "messages[0].content", f"at most {MAX_PARTS} items"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "param", "says"), LIMITS, ids=[p for _, p, _ in LIMITS])
def test_a_field_past_its_limit_is_refused_naming_it_and_the_limit(body, param, says):
    with pytest.raises(BadRequest) as bad:
        parse(ChatCompletionRequest, body)
    assert (bad.value.param, bad.value.http_status) == (param, 400)
    assert says in bad.value.message


def test_fields_at_their_limits_are_taken():
    body = chat(
        metadata=pairs(MAX_METADATA_PAIRS, MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS),
        messages=[{"role": "user", "content": "x"}] * MAX_MESSAGES,
        max_completion_tokens=MAX_OUTPUT_TOKENS,
    )
    assert chat_input(parse(ChatCompletionRequest, body)).max_tokens == MAX_OUTPUT_TOKENS


def test_a_long_key_the_caller_sent_is_cut_in_the_param():
    with pytest.raises(BadRequest) as bad:
        parse(ChatCompletionRequest, chat(logit_bias={"x" * 10_000: "not a number"}))
    assert bad.value.param.startswith("logit_bias.xxx") and len(bad.value.param) <= 100


def test_conflicting_token_limits_and_empty_stop_are_refused():
    with pytest.raises(BadRequest, match="not both"):
        chat_input(parse(ChatCompletionRequest, chat(max_tokens=5, max_completion_tokens=6)))
    with pytest.raises(BadRequest) as empty:
        chat_input(parse(ChatCompletionRequest, chat(stop=[""])))
    assert empty.value.param == "stop[0]"
    with pytest.raises(BadRequest) as missing:
        chat_input(parse(ChatCompletionRequest, chat(messages=[{"role": "assistant"}])))
    assert missing.value.param == "messages[0].content"


# What pydantic's lax mode used to coerce, and OpenAI refuses with 400 invalid_type naming the field.
COERCIONS = [
    ({"temperature": True}, "temperature", "expected a number, but got a boolean"),
    ({"temperature": "0.5"}, "temperature", "expected a number, but got a string"),
    ({"top_p": "1"}, "top_p", "expected a number, but got a string"),
    ({"max_tokens": 5.0}, "max_tokens", "expected an integer, but got a decimal number"),
    ({"max_tokens": "5"}, "max_tokens", "expected an integer, but got a string"),
    ({"max_completion_tokens": True}, "max_completion_tokens", "expected an integer, but got a boolean"),
    ({"seed": 3.0}, "seed", "expected an integer, but got a decimal number"),
    ({"n": True}, "n", "expected an integer, but got a boolean"),
    ({"n": 1.0}, "n", "expected an integer, but got a decimal number"),
    ({"presence_penalty": False}, "presence_penalty", "expected a number, but got a boolean"),
    ({"frequency_penalty": "0"}, "frequency_penalty", "expected a number, but got a string"),
    ({"logprobs": 0}, "logprobs", "expected a boolean, but got an integer"),
    ({"top_logprobs": False}, "top_logprobs", "expected an integer, but got a boolean"),
    ({"stream": "true"}, "stream", "expected a boolean, but got a string"),
    ({"stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage",
     "expected a boolean, but got an integer"),
    ({"parallel_tool_calls": 1}, "parallel_tool_calls", "expected a boolean, but got an integer"),
    ({"metadata": {"k": 1}}, "metadata.k", "expected a string, but got an integer"),
    ({"stop": 5}, "stop", "expected a string or an array, but got an integer"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content",
     "expected a string or an array, but got an integer"),
    ({"messages": "hi"}, "messages", "expected an array, but got a string"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "param", "says"), COERCIONS, ids=[repr(f) for f, _, _ in COERCIONS])
def test_a_value_of_the_wrong_json_type_is_refused_not_coerced(fields, param, says):
    with pytest.raises(BadRequest) as bad:
        parse(ChatCompletionRequest, chat(**fields))
    assert (bad.value.param, bad.value.error_code, bad.value.http_status) == (param, "invalid_type", 400)
    assert bad.value.message == f"Invalid type for '{param}': {says} instead."


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "m", "prompt": "x", "echo": 0}', "echo"),
        (b'{"model": "m", "prompt": "x", "best_of": 1.0}', "best_of"),
        (b'{"model": "m", "prompt": "x", "max_tokens": "5"}', "max_tokens"),
        (b'{"model": "m", "prompt": 5}', "prompt"),
    ],
)
def test_text_completions_check_types_as_strictly(body, param):
    with pytest.raises(BadRequest) as bad:
        parse(CompletionRequest, body)
    assert (bad.value.param, bad.value.error_code) == (param, "invalid_type")


def test_service_tier_takes_openais_values_only():
    for tier in ("auto", "default", "flex", "scale", "priority"):
        assert parse(ChatCompletionRequest, chat(service_tier=tier)).service_tier == tier
    with pytest.raises(BadRequest) as bad:
        parse(ChatCompletionRequest, chat(service_tier="whatever"))
    assert (bad.value.param, bad.value.error_code) == ("service_tier", "invalid_value")
    assert "'auto', 'default', 'flex', 'scale' or 'priority'" in bad.value.message


@pytest.mark.parametrize("stream", [False, None, "absent"])
def test_stream_options_without_stream_is_refused_as_openai_refuses_it(stream):
    fields = {"stream_options": {"include_usage": True}} | ({} if stream == "absent" else {"stream": stream})
    with pytest.raises(BadRequest) as bad:
        chat_input(parse(ChatCompletionRequest, chat(**fields)))
    assert bad.value.param == "stream_options" and bad.value.http_status == 400
    assert bad.value.message == "The 'stream_options' parameter is only allowed when 'stream' is enabled."


ACCEPTED = [
    {"temperature": 1, "top_p": 1},  # an integer is a number, for OpenAI too
    {"temperature": 0.7, "top_p": 0.9, "seed": 3, "max_tokens": 5, "n": 1},
    {"presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": False, "top_logprobs": 0},
    {"stream": True, "stream_options": {"include_usage": True}},
    {"stream": None, "stream_options": None},
    {"temperature": None, "top_p": None, "seed": None, "max_tokens": None, "n": None, "stop": None,
     "presence_penalty": None, "frequency_penalty": None, "logprobs": None, "service_tier": None,
     "user": None, "metadata": None, "store": None, "tools": None, "tool_choice": None},
]  # fmt: skip


@pytest.mark.parametrize("fields", ACCEPTED, ids=range(len(ACCEPTED)))
def test_values_of_the_right_type_and_nulls_are_still_taken(fields):
    inp = chat_input(parse(ChatCompletionRequest, chat(**fields)))
    assert inp.temperature == (fields.get("temperature") if fields.get("temperature") is not None else 1.0)
    assert isinstance(inp.temperature, float) and isinstance(inp.top_p, float)
