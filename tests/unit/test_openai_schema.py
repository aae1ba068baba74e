"""OpenAI request bodies -> the router's GenerationInput, and every refusal naming its field."""

from __future__ import annotations

import json

import pytest

from services.router.openai_http.schema import (
    BadRequest,
    ChatCompletionRequest,
    CompletionRequest,
    chat_input,
    completion_input,
    parse,
)


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
        ("system", "Be brief."),
        ("user", "Sum up"),
        ("assistant", "Sure."),
        ("tool", "42"),
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


def test_tools_are_refused_unless_tool_choice_is_none():
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    with pytest.raises(BadRequest) as refused:
        chat_input(parse(ChatCompletionRequest, chat(tools=tools)))
    assert refused.value.param == "tools" and "does not support tool calls" in refused.value.message
    assert chat_input(parse(ChatCompletionRequest, chat(tools=tools, tool_choice="none"))).messages


def test_conflicting_token_limits_and_empty_stop_are_refused():
    with pytest.raises(BadRequest, match="not both"):
        chat_input(parse(ChatCompletionRequest, chat(max_tokens=5, max_completion_tokens=6)))
    with pytest.raises(BadRequest) as empty:
        chat_input(parse(ChatCompletionRequest, chat(stop=[""])))
    assert empty.value.param == "stop[0]"
    with pytest.raises(BadRequest) as missing:
        chat_input(parse(ChatCompletionRequest, chat(messages=[{"role": "assistant"}])))
    assert missing.value.param == "messages[0].content"
