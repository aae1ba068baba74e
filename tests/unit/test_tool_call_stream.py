"""Tool calls read from a streamed answer, in each family's format, whatever the split of its
text into deltas: a call's first piece (id, name, no arguments) as soon as its name is read,
then its arguments in fragments as they arrive, text around calls as text, and only the first
call when parallel calls are off."""

from __future__ import annotations

import json
import random

import pytest

from services.router.chat import ToolCallDelta, ToolCallStream, ToolSpec, assemble, template_for

TOOLS = (ToolSpec("lookup"), ToolSpec("close_account"))
ARGS = {"id": "4}2{", "tags": ["a", 'b"]'], "n": {"x": 1}}  # brackets inside strings, nesting
# Two calls, as each family's model writes them.
TWO_CALLS = {
    "llama-3": '{"name": "lookup", "parameters": ARGS}; {"name": "close_account", "parameters": {}}',
    "qwen2.5": 'Checking.\n<tool_call>\n{"name": "lookup", "arguments": ARGS}\n</tool_call>\n'
    '<tool_call>\n{"name": "close_account", "arguments": {}}\n</tool_call>',
    "mistral": '[TOOL_CALLS] [{"name": "lookup", "arguments": ARGS}, {"name": "close_account", "arguments": {}}]',
}
TEXT_BEFORE = {"qwen2.5": "Checking.\n"}
EXPECTED = [("lookup", ARGS), ("close_account", {})]


def answer(family: str) -> str:
    return TWO_CALLS[family].replace("ARGS", json.dumps(ARGS))


def run(family: str, deltas: list[str], max_calls: int = 0) -> list:
    stream = ToolCallStream(template_for(family), TOOLS, max_calls)
    return [piece for d in deltas for piece in stream.feed(d)] + stream.finish()


def calls(pieces: list) -> list[tuple[str, dict]]:
    return [(c.name, json.loads(c.arguments)) for c in assemble(pieces).tool_calls]


def check_openai_order(pieces: list) -> None:
    """Each call: its first piece with id and name and no arguments, then only fragments."""
    started: list[int] = []
    for piece in pieces:
        if isinstance(piece, ToolCallDelta) and piece.id:
            assert piece.index == len(started) and piece.name and piece.arguments == ""
            started.append(piece.index)
        elif isinstance(piece, ToolCallDelta):
            assert piece.index == started[-1] and not piece.name and piece.arguments


@pytest.mark.parametrize("family", sorted(TWO_CALLS))
def test_every_split_into_two_deltas_reads_the_same_calls(family):
    text = answer(family)
    for cut in range(len(text) + 1):
        pieces = run(family, [text[:cut], text[cut:]])
        check_openai_order(pieces)
        assert calls(pieces) == EXPECTED, cut
        assert assemble(pieces).content == TEXT_BEFORE.get(family, ""), cut


@pytest.mark.parametrize("family", sorted(TWO_CALLS))
def test_a_character_at_a_time_the_arguments_stream_before_the_call_ends(family):
    text = answer(family)
    stream = ToolCallStream(template_for(family), TOOLS)
    seen: list = []
    checked = False
    for i, char in enumerate(text):
        seen += stream.feed(char)
        if text[: i + 1].endswith('"tags": ["a"'):  # halfway through the first call's arguments
            head, *fragments = [p for p in seen if isinstance(p, ToolCallDelta)]
            assert head.name == "lookup" and "".join(f.arguments for f in fragments).endswith('"tags": ["a"')
            checked = True
    assert checked
    pieces = seen + stream.finish()
    check_openai_order(pieces)
    assert calls(pieces) == EXPECTED
    text_pieces = [p for p in pieces if isinstance(p, str)]
    assert "".join(text_pieces) == TEXT_BEFORE.get(family, "")  # no whitespace between/after calls


@pytest.mark.parametrize("family", sorted(TWO_CALLS))
def test_max_calls_keeps_only_the_first(family):
    pieces = run(family, list(answer(family)), max_calls=1)
    assert calls(pieces) == EXPECTED[:1]
    assert {p.index for p in pieces if isinstance(p, ToolCallDelta)} == {0}


@pytest.mark.parametrize("family", sorted(TWO_CALLS))
def test_a_call_of_a_function_not_offered_is_text(family):
    text = answer(family).replace("lookup", "drop_tables").replace("close_account", "drop_users")
    pieces = run(family, list(text))
    assert all(isinstance(p, str) for p in pieces) and "".join(pieces) == text


@pytest.mark.parametrize(
    ("family", "text", "content", "found"),
    [
        # the name after the arguments, or the arguments as a JSON string: read whole
        ("llama-3", '{"parameters": {"id": "1"}, "name": "lookup"}', "", [("lookup", {"id": "1"})]),
        ("mistral", '[TOOL_CALLS] [{"name": "lookup", "arguments": "{\\"id\\": \\"1\\"}"}]', "",
         [("lookup", {"id": "1"})]),
        ("llama-3", '<|python_tag|>{"name": "close_account", "parameters": {}}', "", [("close_account", {})]),
        ("mistral", '[TOOL_CALLS] {"name": "close_account", "arguments": {}}', "", [("close_account", {})]),
        # text after a call is text; a JSON answer that is no call is text
        ("qwen2.5", '<tool_call>{"name": "close_account", "arguments": {}}</tool_call>\nDone.', "\nDone.",
         [("close_account", {})]),
        ("llama-3", '{"answer": 42}', '{"answer": 42}', []),
        ("qwen2.5", "<tool_call> not json </tool_call>", "<tool_call> not json </tool_call>", []),
        ("qwen2.5", "a <tool_c", "a <tool_c", []),  # a marker's beginning, then the end
    ],
)  # fmt: skip
def test_other_shapes_the_models_write(family, text, content, found):
    for deltas in ([text], list(text)):
        pieces = run(family, deltas)
        check_openai_order(pieces)
        assert (assemble(pieces).content, calls(pieces)) == (content, found)


def test_an_answer_cut_short_inside_the_arguments_keeps_what_was_sent():
    pieces = run("qwen2.5", ['<tool_call>{"name": "lookup", "arguments": {"id": "1'])
    assert [(p.name, p.arguments) for p in pieces] == [("lookup", ""), ("", '{"id": "1')]


FRAGMENTS = (
    "<tool_call>", "</tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "{", "}", "[", "]", '"', "\\", ",", ";",
    ":", " ", "\n", '"name"', '"arguments"', '"parameters"', '"lookup"', '"close_account"', '"x"', "1", "ok",
)  # fmt: skip


def raw(pieces: list) -> tuple[str, list[tuple[str, str]]]:
    parsed = assemble(pieces)
    return parsed.content, [(c.name, c.arguments) for c in parsed.tool_calls]


@pytest.mark.parametrize("family", sorted(TWO_CALLS))
def test_random_answers_read_the_same_however_split_and_text_is_never_lost(family):
    rng = random.Random(family)
    for _ in range(300):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randrange(1, 30)))
        if rng.random() < 0.5:  # a well-formed call somewhere, among the noise
            text = text[: len(text) // 2] + answer(family) + text[len(text) // 2 :]
        content, found = raw(run(family, [text]))
        cuts = sorted(rng.sample(range(len(text) + 1), min(4, len(text) + 1)))
        split = run(family, [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)])
        check_openai_order(split)
        assert raw(split) == (content, found), text
        if not found:
            assert content == text, text
