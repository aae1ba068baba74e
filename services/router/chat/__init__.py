"""Chat templates per model family (templates.py), the tool-call types the OpenAI front door
and the engines' prompts share (types.py), and tool calls in streamed answers (stream.py).

Templates are plugins: listed once here, chosen by the catalog model's `family` (its prefix,
case-insensitive); a family not listed gets the neutral template, which offers no tools."""

from __future__ import annotations

from functools import cache

from services.common.plugins import PluginRegistry
from services.router.chat.stream import Piece, ToolCallStream, assemble
from services.router.chat.templates import ChatML, ChatTemplate, Llama3, Mistral, Neutral
from services.router.chat.types import (
    AUTO,
    NONE,
    REQUIRED,
    ChatMessage,
    Parsed,
    ToolCallDelta,
    ToolCallOut,
    ToolChoice,
    ToolSpec,
    as_message,
)

TEMPLATE = "chat-template"
TEMPLATES = PluginRegistry(
    (TEMPLATE,),
    {TEMPLATE: {"neutral": Neutral, "llama-3": Llama3, "chatml": ChatML, "mistral": Mistral}},
)
# family prefix -> template; the first match wins
FAMILIES: tuple[tuple[str, str], ...] = (
    ("llama-3", "llama-3"),
    ("llama3", "llama-3"),
    ("qwen", "chatml"),
    ("yi", "chatml"),
    ("hermes", "chatml"),
    ("mistral", "mistral"),
    ("mixtral", "mistral"),
)


def template_for(family: str) -> ChatTemplate:
    family = family.lower()
    return _built(next((t for prefix, t in FAMILIES if family.startswith(prefix)), "neutral"))


@cache
def _built(name: str) -> ChatTemplate:
    """One instance per template, shared by every call: templates hold no state, and building
    one per request (the registry checks the factory's signature) was a measurable part of the
    router's CPU per request."""
    return TEMPLATES.build(TEMPLATE, name)


__all__ = [
    "AUTO", "NONE", "REQUIRED", "TEMPLATE", "TEMPLATES", "ChatMessage", "ChatTemplate", "Parsed", "Piece",
    "ToolCallDelta", "ToolCallOut", "ToolCallStream", "ToolChoice", "ToolSpec", "as_message", "assemble",
    "template_for",
]  # fmt: skip
