"""Tool calling on the simulator's OpenAI chat API, as vLLM serves it with
`--enable-auto-tool-choice` and a tool-call parser.

A request that offers `tools` (OpenAI function definitions) is answered with calls when
`tool_choice` is `required` or names a function (always), or is `auto` (the default with tools)
and the last message is the user's; `none`, or `auto` after a tool result, gets text. The calls
are chosen as for chat-template prompts (tool_calls.choose_calls: the functions the user's last
turn names, else the first; only the named one for a named choice; only the first with
`parallel_tool_calls: false`), with arguments built from each function's JSON Schema and the
user's words, so the same request gets the same arguments. The engine streams the arguments'
JSON token by token; the answer carries the calls as `message.tool_calls` with finish_reason
`tool_calls`, or streamed as `delta.tool_calls` pieces, one a chunk: first the call's index, id,
type and name with empty arguments, then fragments of its arguments by index. An answer cut
short by max_tokens keeps what was written, with finish_reason `length`.

Bounds (400, vLLM's error body naming the field): at most MAX_TOOLS tools with distinct names
of OpenAI's form; parameters a JSON Schema object of at most MAX_SCHEMA_BYTES and
MAX_SCHEMA_DEPTH levels of nesting (the rule and bounds the router's OpenAI front door applies too:
services/common/openai_tool_calls.py); a tool_choice other than `none` needs tools, and a named
one must be among them.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.common.openai_tool_calls import (
    FUNCTION_NAME,
    MAX_DESCRIPTION_CHARS,
    function_tool,
    parameters_error,
    tool_call,
    tool_call_fragment,
    tool_call_start,
)

from .sequence import InvalidRequestError
from .tool_calls import choose_calls


class ToolRequestError(InvalidRequestError):
    """A bad tools / tool_choice combination; `param` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_CHARS)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _bounded_object_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None and (problem := parameters_error(schema)):
            raise ValueError(problem)
        return schema


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: FunctionDefinition

    def as_openai(self) -> dict[str, Any]:
        """The definition as sent (fields it left out stay out)."""
        f = self.function
        return function_tool(f.name, f.description, f.parameters, f.strict)


class NamedFunction(BaseModel):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice | None


def planned_calls(
    tools: list[FunctionTool] | None,
    choice: ToolChoice,
    parallel: bool | None,
    turns: list[tuple[str, str]],
) -> list[dict[str, Any]]:
    """The calls the answer makes ({name, arguments} each), none for a text answer. `turns` are
    the conversation's (role, text); ToolRequestError for tools and a choice that do not fit."""
    if choice not in (None, "none") and not tools:
        raise ToolRequestError("When using `tool_choice`, `tools` must be set.", "tool_choice")
    if not tools:
        return []
    functions = [t.as_openai()["function"] for t in tools]
    if len({f["name"] for f in functions}) != len(functions):
        raise ToolRequestError("each tool needs a distinct function name", "tools")
    if isinstance(choice, NamedToolChoice):
        functions = [f for f in functions if f["name"] == choice.function.name]
        if not functions:
            raise ToolRequestError(
                f"Tool '{choice.function.name}' has not been passed in `tools`.", "tool_choice"
            )
    elif choice == "none" or (choice in (None, "auto") and turns[-1][0] != "user"):
        return []
    said = next((text for role, text in reversed(turns) if role == "user"), "")
    calls = choose_calls(functions, said)
    return calls[:1] if parallel is False else calls


class CallScript:
    """One answer's calls, and the text the engine streams for them: their arguments' JSON, one
    call after another (a call's JSON never shares a token with the next)."""

    def __init__(self, calls: list[dict[str, Any]]) -> None:
        self.calls = [
            (f"chatcmpl-tool-{uuid.uuid4().hex}", c["name"], json.dumps(c["arguments"], ensure_ascii=False))
            for c in calls
        ]
        self.text = "".join(arguments for _, _, arguments in self.calls)
        self._sent = 0  # characters of `text` streamed so far

    def deltas(self, piece: str) -> list[dict[str, Any]]:
        """The `delta.tool_calls` entries for the engine's next piece of text, in order."""
        start, end = self._sent, self._sent + len(piece)
        self._sent, out, low = end, [], 0
        for index, (call_id, name, arguments) in enumerate(self.calls):
            high = low + len(arguments)
            if start <= low < end:  # the call begins: its id and name come first
                out.append(tool_call_start(index, call_id, name))
            if low < end and start < high:
                fragment = piece[max(low, start) - start : min(high, end) - start]
                out.append(tool_call_fragment(index, fragment))
            low = high
        return out

    def message_calls(self, text: str) -> list[dict[str, Any]]:
        """`message.tool_calls` for the engine's whole answer (as far as it got)."""
        out, low = [], 0
        for call_id, name, arguments in self.calls:
            if low >= len(text):
                break
            written = text[low : low + len(arguments)]
            out.append(tool_call(call_id, name, written))
            low += len(arguments)
        return out
