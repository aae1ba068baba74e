"""Tool calls in a streamed answer, read as the model writes them and passed on as OpenAI streams
them: a call's first piece (its id and name) as soon as the name is read, then its JSON
arguments in fragments as they arrive (vLLM's tool parsers stream the same way); text around
the calls streams as text.

Calls come in groups, as the family writes them: a marker (`<tool_call>`, `[TOOL_CALLS]`,
Llama's `<|python_tag|>` or a bare `{` opening the answer), an optional opening bracket
(Mistral's list), JSON objects between separators, and a closing tag. Text that may be a call
is held back until it is known; an object that names no offered function, or is no call, goes
out as text after all."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from services.router.chat.types import Parsed, ToolCallDelta, ToolCallOut, ToolSpec, call_object, new_call_id

if TYPE_CHECKING:
    from services.router.chat.templates import ChatTemplate

Piece = str | ToolCallDelta  # text to send, or a piece of a tool call
TEXT, GROUP, OBJECT = "text", "group", "object"
# `{"name": "...", "arguments": ` and the first character of the arguments: enough to start a call.
HEADER = re.compile(r'\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"(?:arguments|parameters)"\s*:\s*(\S)')
HEADER_SCAN_CHARS = 1024  # an object that names its function later is read whole


class _JsonEnd:
    """Where a JSON value that opens with a bracket ends, read piece by piece."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False

    def scan(self, text: str, start: int = 0) -> int:
        """The index just past the value's end in `text`, or -1 while it goes on."""
        for i in range(start, len(text)):
            c = text[i]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif c == "\\":
                    self.escaped = True
                elif c == '"':
                    self.in_string = False
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
        return -1


class _Object:
    """One JSON object of a call group, as far as it came."""

    def __init__(self) -> None:
        self.text = ""
        self.end = _JsonEnd()
        self.index = -1  # the call's index once its header went out
        self.whole = False  # the header is not at the start: read the object whole
        self.args = _JsonEnd()
        self.args_scanned = self.args_end = self.sent = -1  # positions in `text`


class ToolCallStream:
    """Feed the answer's text deltas; each call returns the pieces that can be sent now.
    `max_calls` (0: any number) keeps only the first calls (`parallel_tool_calls: false`)."""

    def __init__(self, template: ChatTemplate, tools: Sequence[ToolSpec], max_calls: int = 0) -> None:
        self.template = template
        self.names = frozenset(t.name for t in tools)
        self.max_calls = max_calls
        self.state = TEXT
        self.buf = ""  # received, not read yet
        self.held = ""  # read, and text after all unless it turns out to be a call
        self.released = False  # (start-only families) the rest of the answer is text
        self.opened = False  # the group began with the family's opening bracket
        self.group_objects = self.group_calls = self.calls = 0
        self.obj: _Object | None = None
        self.after_call = False  # nothing but whitespace was said since the last call
        self.blank = ""  # that whitespace: sent only if more text follows
        self.out: list[Piece] = []

    def feed(self, text: str) -> list[Piece]:
        self.buf += text
        return self._run(final=False)

    def finish(self) -> list[Piece]:
        """What is left once the answer ended."""
        return self._run(final=True)

    def _run(self, final: bool) -> list[Piece]:
        steps = {TEXT: self._text, GROUP: self._group, OBJECT: self._object}
        while steps[self.state](final):
            pass
        if final:
            self._say(self.held)
            self.held = ""
        out, self.out = self.out, []
        return out

    # --- outside calls ----------------------------------------------------------------------
    def _text(self, final: bool) -> bool:
        markers = self.template.call_markers
        if self.released or not markers:
            self._say(self.buf)
            self.buf = ""
            return False
        if self.template.markers_anywhere:
            found = [(i, m) for m in markers if (i := self.buf.find(m)) >= 0]
            if found:
                cut, marker = min(found)
                self._say(self.buf[:cut])
                self.buf = self.buf[cut:]
                self._begin_group(marker)
                return True
            keep = 0 if final else _marker_prefix(self.buf, markers)
            self._say(self.buf[: len(self.buf) - keep])
            self.buf = self.buf[len(self.buf) - keep :]
            return False
        start = self.buf.lstrip()
        marker = next((m for m in markers if start.startswith(m)), None)
        if marker is not None:
            lead = len(self.buf) - len(start)
            self.held, self.buf = self.held + self.buf[:lead], start
            self._begin_group(marker)
            return True
        if not final and (not start or any(m.startswith(start) for m in markers)):
            return False  # could still become a call
        self.released = True
        return True

    def _begin_group(self, marker: str) -> None:
        take = 0 if marker.startswith("{") else len(marker)  # Llama's bare object is the call itself
        self.held += self.buf[:take]
        self.buf = self.buf[take:]
        self.state, self.opened = GROUP, False
        self.group_objects = self.group_calls = 0

    def _end_group(self) -> None:
        self._say(self.held)  # what was read since the group's last call (if any) is text
        self.held = ""
        self.state = TEXT
        self.released = not self.template.markers_anywhere

    def _group(self, final: bool) -> bool:
        t = self.template
        rest = self.buf.lstrip(t.call_separators)
        self._syntax(self.buf[: len(self.buf) - len(rest)])
        self.buf = rest
        if not rest:
            if final:
                self._end_group()
            return final
        if t.call_open and not self.opened and not self.group_objects and rest.startswith(t.call_open):
            self.opened = True
            self._syntax(t.call_open)
            self.buf = rest[len(t.call_open) :]
            return True
        if rest.startswith("{"):
            self.state, self.obj = OBJECT, _Object()
            self.group_objects += 1
            return True
        close = t.call_close if self.opened or not t.call_open else ""
        if close and rest.startswith(close):
            self._syntax(close)
            self.buf = rest[len(close) :]
            self._end_group()
            return True
        if close and close.startswith(rest) and not final:
            return False
        self._end_group()  # anything else ends the group
        return True

    def _syntax(self, text: str) -> None:
        """Separators and brackets: held while the group made no call, dropped after one."""
        if not self.group_calls:
            self.held += text

    # --- one call ---------------------------------------------------------------------------
    def _object(self, final: bool) -> bool:
        obj = self.obj
        assert obj is not None
        end = obj.end.scan(self.buf)
        taken = self.buf if end < 0 else self.buf[:end]
        self.buf = self.buf[len(taken) :]
        obj.text += taken
        if obj.index < 0:
            self.held += taken
        self._read(obj, closed=end >= 0)
        if self.obj is None:  # it was no call
            return True
        if end >= 0 or final:
            self.obj, self.state = None, GROUP
            return True
        return False

    def _read(self, obj: _Object, closed: bool) -> None:
        if obj.index < 0 and not obj.whole:
            header = HEADER.match(obj.text)
            if header is None:
                obj.whole = len(obj.text) > HEADER_SCAN_CHARS
            else:
                try:
                    name = json.loads(header.group(1))
                except ValueError:
                    name = None
                if name not in self.names:
                    self._not_a_call()
                    return
                if header.group(2) != "{":  # arguments written as a string: read it whole
                    obj.whole = True
                else:
                    self._start_call(obj, name)
                    obj.args_scanned = obj.sent = header.start(2)
        if obj.index >= 0 and obj.sent >= 0:
            self._send_arguments(obj)
        elif closed and obj.index < 0:
            call = call_object(obj.text, self.names, ("arguments", "parameters"))
            if call is None:
                self._not_a_call()
                return
            self._start_call(obj, call.name)
            self._send(ToolCallDelta(obj.index, call.arguments))

    def _start_call(self, obj: _Object, name: str) -> None:
        obj.index = self.calls
        self.calls += 1
        self.group_calls += 1
        self.held, self.blank, self.after_call = "", "", True
        self._send(ToolCallDelta(obj.index, "", new_call_id(), name))

    def _send_arguments(self, obj: _Object) -> None:
        if obj.args_end < 0:
            obj.args_end = obj.args.scan(obj.text, obj.args_scanned)
            obj.args_scanned = len(obj.text)
        stop = obj.args_end if obj.args_end >= 0 else len(obj.text)
        if stop > obj.sent:
            self._send(ToolCallDelta(obj.index, obj.text[obj.sent : stop]))
            obj.sent = stop

    def _not_a_call(self) -> None:
        self.obj = None
        self._end_group()

    # --- output -----------------------------------------------------------------------------
    def _send(self, delta: ToolCallDelta) -> None:
        if not self.max_calls or delta.index < self.max_calls:
            self.out.append(delta)

    def _say(self, text: str) -> None:
        if not text:
            return
        if self.after_call:  # whitespace right after a call (between or after calls) is no answer
            self.blank += text
            if not self.blank.strip():
                return
            text, self.blank, self.after_call = self.blank, "", False
        if self.out and isinstance(self.out[-1], str):
            self.out[-1] += text
        else:
            self.out.append(text)


def _marker_prefix(text: str, markers: Sequence[str]) -> int:
    """The length of the longest tail of `text` that could begin a marker."""
    keep = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), keep, -1):
            if text.endswith(marker[:n]):
                keep = n
                break
    return keep


def assemble(pieces: Iterable[Piece]) -> Parsed:
    """A whole answer from its pieces: the text, and each call with its arguments joined."""
    text: list[str] = []
    calls: dict[int, tuple[str, str, list[str]]] = {}
    for piece in pieces:
        if isinstance(piece, str):
            text.append(piece)
        elif piece.id:
            calls[piece.index] = (piece.id, piece.name, [piece.arguments])
        elif piece.index in calls:
            calls[piece.index][2].append(piece.arguments)
    out = tuple(ToolCallOut(name, "".join(args), id) for id, name, args in calls.values())
    return Parsed("".join(text), out)


def read_calls(template: ChatTemplate, text: str, tools: Sequence[ToolSpec]) -> Parsed:
    """A whole answer's text and calls, read as its stream would be."""
    stream = ToolCallStream(template, tools)
    parsed = assemble([*stream.feed(text), *stream.finish()])
    return Parsed(parsed.content.strip(), parsed.tool_calls) if parsed.tool_calls else parsed
