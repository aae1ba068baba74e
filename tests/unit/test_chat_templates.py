"""Chat templates per model family: each listed template keeps the family contract (every role
rendered in order, tools shown only when offered, plain answers untouched, its own call format
read back whole or streamed), and families map to the right template."""

from __future__ import annotations

import json

import pytest

from services.router.chat import (
    NONE,
    REQUIRED,
    TEMPLATE,
    TEMPLATES,
    ChatMessage,
    ToolCallOut,
    ToolCallStream,
    ToolChoice,
    ToolSpec,
    assemble,
    template_for,
)

LOOKUP = ToolSpec("lookup", "Find an account", {"type": "object", "properties": {"id": {"type": "string"}}})
CLOSE = ToolSpec("close_account")
TOOLS = (LOOKUP, CLOSE)
CONVERSATION = (
    ChatMessage("system", "SYS-1"),
    ChatMessage("user", "USER-2"),
    ChatMessage("assistant", "", tool_calls=(ToolCallOut("lookup", '{"id": "7"}', "call_a"),)),
    ChatMessage("tool", "RESULT-4", tool_call_id="call_a"),
    ChatMessage("assistant", "ASSISTANT-5"),
    ChatMessage("user", "USER-6"),
)
# How each family's model writes a call of lookup(id="42") (a new template needs its sample here).
CALLS = {
    "llama-3": '{"name": "lookup", "parameters": {"id": "42"}}',
    "chatml": 'Let me look.\n<tool_call>\n{"name": "lookup", "arguments": {"id": "42"}}\n</tool_call>',
    "mistral": '[TOOL_CALLS] [{"name": "lookup", "arguments": {"id": "42"}}]',
}
TEXT_BEFORE_CALL = {"chatml": "Let me look."}
PLAIN = "The balance is 42. {not a call}"


def templates() -> list[str]:
    names = TEMPLATES.names(TEMPLATE)
    assert "neutral" in names and len(names) > 1
    return names


@pytest.mark.parametrize("name", templates())
def test_every_role_is_rendered_in_order(name):
    prompt = TEMPLATES.build(TEMPLATE, name).render(CONVERSATION, TOOLS, ToolChoice())
    marks = ["USER-2", "RESULT-4", "ASSISTANT-5", "USER-6"]
    positions = [prompt.find(m) for m in marks]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), (name, positions)
    assert "SYS-1" in prompt  # where the family puts it (Mistral: in the last user turn)
    template = TEMPLATES.build(TEMPLATE, name)
    if template.supports_tools:  # the earlier call is in the history, in the family's format
        assert prompt.find('"7"') < prompt.find("RESULT-4")


@pytest.mark.parametrize("name", templates())
def test_tools_are_shown_only_when_offered(name):
    template = TEMPLATES.build(TEMPLATE, name)
    chat = (ChatMessage("user", "hi"),)
    shown = template.render(chat, TOOLS, ToolChoice())
    assert ("Find an account" in shown) == template.supports_tools
    assert "Find an account" not in template.render(chat, TOOLS, ToolChoice(NONE))
    assert "Find an account" not in template.render(chat, (), ToolChoice())
    if template.supports_tools:
        only = template.render(chat, TOOLS, ToolChoice(function="close_account"))
        assert "close_account" in only and "Find an account" not in only
        assert "must call" in template.render(chat, TOOLS, ToolChoice(REQUIRED))


@pytest.mark.parametrize("name", templates())
def test_a_plain_answer_stays_text_whole_and_streamed(name):
    template = TEMPLATES.build(TEMPLATE, name)
    assert template.parse(PLAIN, TOOLS).tool_calls == ()
    stream = ToolCallStream(template, TOOLS)
    pieces = [p for c in PLAIN for p in stream.feed(c)] + stream.finish()
    assert all(isinstance(p, str) for p in pieces) and "".join(pieces) == PLAIN


@pytest.mark.parametrize("name", [n for n in templates() if TEMPLATES.build(TEMPLATE, n).supports_tools])
def test_the_familys_call_format_is_read_back_whole_and_streamed(name):
    template, text = TEMPLATES.build(TEMPLATE, name), CALLS[name]
    parsed = template.parse(text, TOOLS)
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == [("lookup", {"id": "42"})]
    assert parsed.content == TEXT_BEFORE_CALL.get(name, "")
    assert parsed.tool_calls[0].id.startswith("call_")
    stream = ToolCallStream(template, TOOLS)
    streamed = assemble([p for c in text for p in stream.feed(c)] + stream.finish())  # a character at a time
    assert streamed.content.strip() == TEXT_BEFORE_CALL.get(name, "")
    assert [(c.name, json.loads(c.arguments)) for c in streamed.tool_calls] == [("lookup", {"id": "42"})]
    # a call of a function that was not offered is not a call: it stays text
    assert template.parse(text.replace("lookup", "drop_tables"), TOOLS).tool_calls == ()


def test_llama_reads_several_calls_and_the_python_tag():
    template = template_for("llama-3.1")
    text = '<|python_tag|>{"name": "lookup", "parameters": {"id": "1"}}; {"name": "close_account", "parameters": {}}'
    assert [c.name for c in template.parse(text, TOOLS).tool_calls] == ["lookup", "close_account"]


@pytest.mark.parametrize(
    ("family", "template"),
    [("llama-3", "llama-3"), ("Llama-3.1", "llama-3"), ("qwen2.5", "chatml"), ("mixtral", "mistral"),
     ("mistral-nemo", "mistral"), ("gpt-j", "neutral"), ("", "neutral")],
)  # fmt: skip
def test_families_pick_their_template(family, template):
    assert template_for(family).name == template


def test_the_llama_template_matches_the_published_format():
    prompt = template_for("llama-3").render((ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")))
    assert prompt == (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
