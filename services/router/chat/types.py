"""What a chat call carries besides text: messages with tool calls and tool results, the tools
offered to the model, and the tool calls read back from its answer."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from services.common.openai_tool_calls import function_tool, tool_call, tool_call_fragment, tool_call_start

AUTO, NONE, REQUIRED = "auto", "none", "required"


def new_call_id() -> str:
    return "call_" + secrets.token_urlsafe(18)


@dataclass(frozen=True)
class ToolCallOut:
    """One function call the model asked for (OpenAI's `tool_calls[i]`); `arguments` is JSON text."""

    name: str
    arguments: str
    id: str = field(default_factory=new_call_id)

    def as_openai(self) -> dict[str, Any]:
        return tool_call(self.id, self.name, self.arguments)


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a streamed tool call, as OpenAI streams one: the call's first piece carries its
    `id` and `name` (and no arguments), the next ones fragments of its JSON `arguments`; `index`
    says which call of the answer a piece belongs to."""

    index: int
    arguments: str = ""
    id: str = ""
    name: str = ""

    def as_openai(self) -> dict[str, Any]:
        if self.id:
            return tool_call_start(self.index, self.id, self.name, self.arguments)
        return tool_call_fragment(self.index, self.arguments)


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system | user | assistant | tool
    content: str = ""
    tool_calls: tuple[ToolCallOut, ...] = ()  # an assistant turn that called tools
    tool_call_id: str = ""  # a tool turn: the call it answers
    name: str = ""


@dataclass(frozen=True)
class ToolSpec:
    """A function the caller offers the model: name, description, JSON Schema of its arguments."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The OpenAI function definition, as chat templates print it to the model: with no
        parameters, an object schema with none, so the model sees the form it always does."""
        parameters = self.parameters or {"type": "object", "properties": {}}
        return function_tool(self.name, self.description or None, parameters)


@dataclass(frozen=True)
class ToolChoice:
    """`auto` (the model decides), `none` (no tools shown), `required` (must call one), or a
    function name (must call that one)."""

    mode: str = AUTO
    function: str = ""


@dataclass(frozen=True)
class Parsed:
    """An answer read back: its text, and the tool calls it made (none: a plain answer)."""

    content: str
    tool_calls: tuple[ToolCallOut, ...] = ()


def as_message(message: ChatMessage | tuple[str, str]) -> ChatMessage:
    """gRPC callers send (role, content) pairs; the OpenAI front door sends ChatMessage."""
    if isinstance(message, ChatMessage):
        return message
    role, content = message
    return ChatMessage(role, content)


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def call_object(text: str, names: frozenset[str], args_keys: tuple[str, ...]) -> ToolCallOut | None:
    """A JSON object `{"name": ..., <args key>: {...}}` naming one of `names`, as a tool call."""
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = next((obj[k] for k in args_keys if k in obj), {})
    if isinstance(args, str):  # some models write the arguments as a JSON string already
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCallOut(obj["name"], json.dumps(args, ensure_ascii=False))
