"""Tool calls in a streamed answer: text that is, or may become, a tool call is held back;
everything else goes out as it comes. At the end the held text is read as calls, or released
as text if it is not one (OpenAI streams a call as `delta.tool_calls`, never as content)."""

from __future__ import annotations

from collections.abc import Sequence

from services.router.chat.templates import ChatTemplate
from services.router.chat.types import Parsed, ToolSpec


class ToolCallStream:
    def __init__(self, template: ChatTemplate, tools: Sequence[ToolSpec]) -> None:
        self.template = template
        self.tools = tools
        self.held = ""
        self.calling = False  # a call began: hold everything to the end
        self.released = False  # (start-only families) the answer is text: stop looking

    def feed(self, text: str) -> str:
        """The text that can be sent now."""
        self.held += text
        if self.calling:
            return ""
        if self.template.markers_anywhere:
            return self._feed_anywhere()
        if self.released:
            out, self.held = self.held, ""
            return out
        start = self.held.lstrip()
        if any(start.startswith(m) for m in self.template.call_markers):
            self.calling = True
            return ""
        if not start or any(m.startswith(start) for m in self.template.call_markers):
            return ""  # could still become a call
        self.released = True
        out, self.held = self.held, ""
        return out

    def _feed_anywhere(self) -> str:
        found = [i for i in (self.held.find(m) for m in self.template.call_markers) if i >= 0]
        if found:
            cut = min(found)
            out, self.held, self.calling = self.held[:cut], self.held[cut:], True
            return out
        keep = 0  # the longest tail that could begin a marker
        for marker in self.template.call_markers:
            for n in range(min(len(marker) - 1, len(self.held)), 0, -1):
                if self.held.endswith(marker[:n]):
                    keep = max(keep, n)
                    break
        cut = len(self.held) - keep
        out, self.held = self.held[:cut], self.held[cut:]
        return out

    def finish(self) -> Parsed:
        """What was held: the calls it makes, or text to send after all."""
        held, self.held = self.held, ""
        if not held:
            return Parsed("")
        parsed = self.template.parse(held, self.tools)
        return parsed if parsed.tool_calls else Parsed(held)
