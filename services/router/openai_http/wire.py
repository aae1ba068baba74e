"""OpenAI's response bodies and server-sent events, built from the router's text deltas and
the finished call. Chunks are what OpenAI sends: `data: {json}` events with `choices[0].delta`
(chat) or `choices[0].text` (completions), a last choice with `finish_reason`, an optional
usage chunk with empty `choices`, then `data: [DONE]`.

The per-delta JSON is a fixed prefix and suffix around the escaped text, so a streamed token
costs one json.dumps of its text.
"""

from __future__ import annotations

import json
import time
from json.encoder import encode_basestring
from typing import Any

from harness.common.v1 import common_pb2

from services.router.call import Call
from services.router.chat import ToolCallDelta, ToolCallOut

DONE = b"data: [DONE]\n\n"


# What json.dumps(obj, separators=(",", ":"), ensure_ascii=False) builds on every call, once.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(obj: Any) -> str:
    return _ENCODER.encode(obj)


def finish_reason(call: Call, called: bool = False) -> str:
    if called:
        return "tool_calls"
    return "length" if call.finish_reason == common_pb2.FINISH_REASON_LENGTH else "stop"


def usage(call: Call) -> dict[str, int | bool]:
    out: dict[str, int | bool] = {
        "prompt_tokens": call.input_tokens,
        "completion_tokens": call.output_tokens,
        "total_tokens": call.input_tokens + call.output_tokens,
    }
    if call.usage_estimated:  # the engine reported no counts: these come from the text's length
        out["estimated"] = True
    return out


class Shape:
    """One endpoint's response format (chat or text completion) for one request."""

    object_whole = ""
    object_chunk = ""
    id_prefix = ""
    _closing: dict[str, str]  # finish reason -> the closing chunk's choices, as JSON

    def __init__(self, request_id: str, model: str, include_usage: bool = False) -> None:
        self.id = f"{self.id_prefix}{request_id}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        head = {"id": self.id, "object": self.object_chunk, "created": self.created, "model": model}
        # Everything before the choices; usage is null on every chunk but the last when asked for.
        self._head = dumps(head)[:-1] + ',"system_fingerprint":null'
        if include_usage:
            self._head += ',"usage":null'
        self._delta_prefix, self._delta_suffix = self._delta_frame()

    def _delta_frame(self) -> tuple[str, str]:
        raise NotImplementedError

    def _choice(
        self, text: str | None, finish: str | None, tool_calls: tuple[ToolCallOut, ...] = ()
    ) -> dict[str, Any]:
        raise NotImplementedError

    def tool_call(self, piece: ToolCallDelta) -> bytes:
        """A piece of a tool call the answer makes (chat only)."""
        return b""

    def _event(self, choices: list[dict[str, Any]], extra: str = "") -> bytes:
        return f'data: {self._head},{extra}"choices":{dumps(choices)}}}\n\n'.encode()

    def start(self) -> bytes:
        """The first event, before any text (chat sends the assistant role there)."""
        return b""

    def delta(self, text: str) -> bytes:
        # encode_basestring is what dumps(text) runs for a str, without building an encoder.
        return f"{self._delta_prefix}{encode_basestring(text)}{self._delta_suffix}".encode()

    def end(self, call: Call, called: bool = False) -> bytes:
        finish = finish_reason(call, called)
        closing = self._closing.get(finish)
        if closing is None:  # the same few bytes for every answer that finishes so
            closing = self._closing[finish] = dumps([self._choice(None, finish)])
        out = f'data: {self._head},"choices":{closing}}}\n\n'.encode()
        if self.include_usage:
            head = self._head.removesuffix(',"usage":null')
            out += f'data: {head},"choices":[],"usage":{dumps(usage(call))}}}\n\n'.encode()
        return out + DONE

    def whole(self, text: str, call: Call, tool_calls: tuple[ToolCallOut, ...] = ()) -> bytes:
        body = {
            "id": self.id,
            "object": self.object_whole,
            "created": self.created,
            "model": self.model,
            "choices": [self._choice(text, finish_reason(call, bool(tool_calls)), tool_calls)],
            "usage": usage(call),
            "system_fingerprint": None,
        }
        return dumps(body).encode()


class ChatShape(Shape):
    object_whole, object_chunk, id_prefix = "chat.completion", "chat.completion.chunk", "chatcmpl-"

    def _delta_frame(self) -> tuple[str, str]:
        return (
            f'data: {self._head},"choices":[{{"index":0,"delta":{{"content":',
            '},"logprobs":null,"finish_reason":null}]}\n\n',
        )

    _closing: dict[str, str] = {}  # noqa: RUF012 (a cache shared by every chat answer)

    def start(self) -> bytes:
        return f'data: {self._head},"choices":{_CHAT_START}}}\n\n'.encode()

    def _choice(
        self, text: str | None, finish: str | None, tool_calls: tuple[ToolCallOut, ...] = ()
    ) -> dict[str, Any]:
        if text is None:  # the closing chunk: an empty delta with the reason
            return {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}
        message: dict[str, Any] = {
            "role": "assistant", "content": (text or None) if tool_calls else text, "refusal": None,
            "annotations": [],
        }  # fmt: skip
        if tool_calls:
            message["tool_calls"] = [c.as_openai() for c in tool_calls]
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}

    def tool_call(self, piece: ToolCallDelta) -> bytes:
        # OpenAI's pieces: the first `{index, id, type, function: {name, arguments: ""}}`, then
        # `{index, function: {arguments: fragment}}`; clients join a call's fragments by index.
        delta = {"tool_calls": [piece.as_openai()]}
        return self._event([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])


_CHAT_START = dumps([{
    "index": 0, "delta": {"role": "assistant", "content": "", "refusal": None}, "logprobs": None,
    "finish_reason": None,
}])  # fmt: skip


class TextShape(Shape):
    object_whole = object_chunk = "text_completion"
    id_prefix = "cmpl-"
    _closing: dict[str, str] = {}  # noqa: RUF012 (a cache shared by every text answer)

    def _delta_frame(self) -> tuple[str, str]:
        return (
            f'data: {self._head},"choices":[{{"index":0,"text":',
            ',"logprobs":null,"finish_reason":null}]}\n\n',
        )

    def _choice(
        self, text: str | None, finish: str | None, tool_calls: tuple[ToolCallOut, ...] = ()
    ) -> dict[str, Any]:
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}


def error_event(body: bytes) -> bytes:
    """An error after the stream began: OpenAI's SDK raises APIError on a `data: {"error": ...}`."""
    return b"data: " + body + b"\n\n"


def model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "harness"}
