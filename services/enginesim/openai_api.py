"""The OpenAI-compatible HTTP API over the same simulated engines, as vLLM serves it.

``GET /health`` (200 once ready, 503 before and while stopping), ``GET /v1/models`` (the READY
models), ``POST /v1/embeddings`` (an embedding model's vectors, as floats, with usage),
``POST /v1/completions`` and ``/v1/chat/completions`` (streamed as server-sent events
or whole; ``stream_options.include_usage`` adds vLLM's usage chunk with empty ``choices``
before ``data: [DONE]``; chat with ``tools`` answers with tool calls, openai_tools.py) and
``GET /metrics`` with vLLM's metric names (vllm_metrics.py).
Errors are vLLM's body, ``{"error": {"message", "type", "param", "code"}}``, with its statuses:
400 for a bad request, 404 for an unknown model, 503 when the queue is full or the model is
going away. A fault drawn mid-stream ends the stream with an ``error`` event, as vLLM does
when its engine fails during generation. A client that disconnects cancels its sequence.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from prometheus_client import CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from services.common.openai_tool_calls import MAX_TOOLS

from . import embedder
from .faults import (
    INJECTED_INTERNAL,
    INJECTED_MIDSTREAM,
    FaultInjector,
    InjectedInternal,
    InjectedUnavailable,
)
from .openai_tools import CallScript, FunctionTool, ToolChoice, planned_calls
from .sequence import EngineError, GenerationRequest, InvalidRequestError, QueueFullError, Sequence
from .simulator import ModelNotFoundError, ModelNotReadyError, Simulator
from .text import script_tokens

MAX_BODY = 8 << 20
MAX_STOP = 16
OWNED_BY = "vllm"


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")  # vLLM takes many more sampling fields

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    def stops(self) -> tuple[str, ...]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        if len(stop) > MAX_STOP:
            raise InvalidRequestError(f"stop: at most {MAX_STOP} sequences")
        return tuple(stop)


class CompletionBody(_Request):
    prompt: str | list[str]


class EmbeddingBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float"] = "float"


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str = Field(max_length=64)
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_TOOLS)

    def text(self) -> str:
        content = self.content
        if isinstance(content, list):
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        calls = "".join(json.dumps(c.get("function")) for c in self.tool_calls or ())
        return (content or "") + calls


class ChatBody(_Request):
    messages: list[_Message] = Field(min_length=1, max_length=4096)
    tools: list[FunctionTool] | None = Field(default=None, min_length=1, max_length=MAX_TOOLS)
    tool_choice: ToolChoice = None
    parallel_tool_calls: bool | None = None

    def prompt(self) -> str:
        """The conversation as the simulator's neutral template writes it (tools first)."""
        tools = [t.as_openai() for t in self.tools or ()]
        head = f"<|tools|>\n{json.dumps(tools)}\n" if tools else ""
        return head + "".join(f"<|{m.role}|>\n{m.text()}\n" for m in self.messages) + "<|assistant|>\n"

    def calls(self) -> CallScript | None:
        """The tool calls that answer it, or None (a text answer)."""
        turns = [(m.role, m.text()) for m in self.messages]
        calls = planned_calls(self.tools, self.tool_choice, self.parallel_tool_calls, turns)
        return CallScript(calls) if calls else None


def _error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": status}}, status_code=status
    )


def _error_event(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "InternalServerError", "param": None, "code": 500}}


def _invalid(exc: ValidationError) -> JSONResponse:
    err = exc.errors()[0]
    param = ".".join(str(p) for p in err["loc"]) or None
    return _error(400, f"{param}: {err['msg']}" if param else err["msg"], "BadRequestError", param)


def _generation(
    body: CompletionBody | ChatBody, request_id: str
) -> tuple[GenerationRequest, CallScript | None]:
    """What the engine is asked, and the calls it answers with (chat with tools only)."""
    calls = None
    if isinstance(body, ChatBody):
        prompt, calls = body.prompt(), body.calls()
    elif isinstance(body.prompt, list):
        if len(body.prompt) != 1:
            raise InvalidRequestError("prompt: the simulator takes one prompt per request")
        prompt = body.prompt[0]
    else:
        prompt = body.prompt
    script = calls.text if calls else None
    default = script_tokens(script) + 1 if script else 16  # the call whole, then its end
    gen = GenerationRequest(
        prompt=prompt,
        max_tokens=body.max_completion_tokens or body.max_tokens or default,
        seed=body.seed or 0,
        temperature=body.temperature,
        stop_words=body.stops(),
        request_id=request_id,
        script=script,
    )
    return gen, calls


class OpenAIApi:
    def __init__(self, sim: Simulator, faults: FaultInjector, metrics: CollectorRegistry) -> None:
        self.sim, self.faults, self.metrics = sim, faults, metrics

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/health", self.health, methods=["GET"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/metrics", self.prometheus, methods=["GET"]),
            ]
        )

    async def health(self, request: Request) -> Response:
        return Response(status_code=200 if self.sim.ready else 503)

    async def models(self, request: Request) -> Response:
        data = [
            {"id": e.spec.name, "object": "model", "created": 0, "owned_by": OWNED_BY, "root": e.spec.name}
            for name, e in sorted(self.sim.engines().items())
            if self.sim.is_ready(name)
        ]
        return JSONResponse({"object": "list", "data": data})

    async def prometheus(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def embeddings(self, request: Request) -> Response:
        raw = await _bounded_body(request)
        if raw is None:
            return _error(413, f"request body over {MAX_BODY} bytes", "BadRequestError")
        try:
            body = EmbeddingBody.model_validate_json(raw)
        except ValidationError as exc:
            return _invalid(exc)
        texts = [body.input] if isinstance(body.input, str) else body.input
        try:
            engine = self.sim.engine(body.model)
            if not engine.spec.embedding:
                return _error(
                    400, f"The model `{body.model}` does not support the Embeddings API", "BadRequestError"
                )
            vectors, tokens = await embedder.embed(engine, texts, request.headers.get("x-request-id", ""))
        except (ModelNotFoundError, ModelNotReadyError):
            return _error(404, f"The model `{body.model}` does not exist.", "NotFoundError", "model")
        except InvalidRequestError as exc:
            return _error(400, str(exc), "BadRequestError")
        except QueueFullError as exc:
            return _error(503, str(exc), "ServiceUnavailableError")
        except EngineError as exc:
            return _error(500, str(exc), "InternalServerError")
        data = [
            {"object": "embedding", "index": i, "embedding": row.tolist()} for i, row in enumerate(vectors)
        ]
        usage = {"prompt_tokens": sum(tokens), "total_tokens": sum(tokens)}
        return JSONResponse({"object": "list", "data": data, "model": body.model, "usage": usage})

    async def _generate(self, request: Request, chat: bool) -> Response:
        raw = await _bounded_body(request)
        if raw is None:
            return _error(413, f"request body over {MAX_BODY} bytes", "BadRequestError")
        try:
            body: CompletionBody | ChatBody = (ChatBody if chat else CompletionBody).model_validate_json(raw)
        except ValidationError as exc:
            return _invalid(exc)
        request_id = request.headers.get("x-request-id", "")
        try:
            engine = self.sim.engine(body.model)
            gen, calls = _generation(body, request_id)
            fault = self.faults.draw(body.model)
            if fault is not None and fault.kind in ("unavailable", "internal"):
                engine.stats.failures["BACKEND"] += 1
                raise (
                    InjectedUnavailable()
                    if fault.kind == "unavailable"
                    else InjectedInternal(INJECTED_INTERNAL)
                )
            seq = engine.submit(gen)
        except (ModelNotFoundError, ModelNotReadyError):
            return _error(404, f"The model `{body.model}` does not exist.", "NotFoundError", "model")
        except InvalidRequestError as exc:
            return _error(400, str(exc), "BadRequestError", getattr(exc, "param", None))
        except (QueueFullError, InjectedUnavailable) as exc:
            return _error(503, str(exc), "ServiceUnavailableError")
        except EngineError as exc:
            return _error(500, str(exc), "InternalServerError")
        limit = fault.after_tokens if fault is not None and fault.kind == "midstream" else None
        shape = _Shape(body.model, chat, request_id, calls)
        if not body.stream:
            return await self._whole(seq, shape, limit)
        usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(self._events(seq, shape, usage, limit), media_type="text/event-stream")

    @staticmethod
    async def _whole(seq: Sequence, shape: _Shape, limit: int | None) -> Response:
        try:
            async for chunk in seq.stream():
                if limit is not None and chunk.index >= limit and not chunk.final:
                    return _error(500, INJECTED_MIDSTREAM.format(n=chunk.index), "InternalServerError")
                if chunk.final:
                    return JSONResponse(shape.whole(seq, chunk.finish_reason))
        except EngineError as exc:
            return _error(500, str(exc), "InternalServerError")
        finally:
            seq.cancel()  # no-op once finished; frees the slot when the client went away
        return _error(500, "the engine ended without a final token", "InternalServerError")

    @staticmethod
    async def _events(seq: Sequence, shape: _Shape, usage: bool, limit: int | None) -> AsyncIterator[bytes]:
        try:
            if shape.chat:
                yield shape.event(shape.choice({"role": "assistant", "content": ""}, None))
            async for chunk in seq.stream():
                if limit is not None and chunk.index > limit:
                    yield shape.event(_error_event(INJECTED_MIDSTREAM.format(n=limit)))
                    return
                reason = (
                    None if not chunk.final else ("stop" if chunk.finish_reason != "length" else "length")
                )
                for choice in shape.pieces(chunk.text, reason):
                    yield shape.event(choice)
            if usage:
                yield shape.event({**shape.head(), "choices": [], "usage": shape.usage(seq)})
            yield b"data: [DONE]\n\n"
        except EngineError as exc:
            yield shape.event(_error_event(str(exc)))
        finally:
            seq.cancel()  # the client went away (the response task is cancelled): stop generating


class _Shape:
    """One response's JSON shapes (text or chat completion), as vLLM writes them."""

    def __init__(self, model: str, chat: bool, request_id: str, calls: CallScript | None = None) -> None:
        self.model, self.chat, self.calls = model, chat, calls
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{request_id or uuid.uuid4().hex}"
        self.created = int(time.time())

    def head(self) -> dict[str, Any]:
        kind: Literal["chat.completion.chunk", "text_completion"] = (
            "chat.completion.chunk" if self.chat else "text_completion"
        )
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def delta(self, text: str) -> dict[str, Any]:
        return {"content": text} if self.chat else {"text": text}

    def choice(self, delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
        if self.chat:
            entry = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        else:
            entry = {"index": 0, **delta, "logprobs": None, "finish_reason": reason, "stop_reason": None}
        return {**self.head(), "choices": [entry]}

    def finish(self, reason: str | None) -> str:
        return "length" if reason == "length" else "tool_calls" if self.calls else "stop"

    def pieces(self, text: str, reason: str | None) -> list[dict[str, Any]]:
        """The chunks for one step's text (one a tool-call piece), the last one with `reason`."""
        if self.calls is None:
            return [self.choice(self.delta(text), reason)] if text or reason else []
        out = [self.choice({"tool_calls": [d]}, None) for d in self.calls.deltas(text)]
        return [*out, self.choice({}, self.finish(reason))] if reason else out

    @staticmethod
    def usage(seq: Sequence) -> dict[str, int]:
        return {
            "prompt_tokens": seq.input_tokens,
            "completion_tokens": seq.output_tokens,
            "total_tokens": seq.input_tokens + seq.output_tokens,
        }

    @staticmethod
    def event(obj: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    def whole(self, seq: Sequence, reason: str | None) -> dict[str, Any]:
        finish = self.finish(reason)
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": seq.text}
            if self.calls:
                message = {**message, "content": None, "tool_calls": self.calls.message_calls(seq.text)}
            choice = {"index": 0, "message": message, "finish_reason": finish}
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": seq.text, "logprobs": None, "finish_reason": finish}
            kind = "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": [choice], "usage": self.usage(seq)}  # fmt: skip


async def _bounded_body(request: Request) -> bytes | None:
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > MAX_BODY:
            return None
    return body
