"""The OpenAI HTTP `Engine` (engine.py): vLLM, SGLang, TGI, Ollama and Triton's OpenAI frontend.

Each generation is one streamed `POST {base}/v1/completions` (the router hands engines a
rendered prompt, so the text endpoint fits every flavour) with
``stream_options.include_usage``; the answer is server-sent events, ``data: {json}`` per
chunk and ``data: [DONE]`` at the end. The parser takes either response shape
(``choices[0].text`` or ``choices[0].delta.content``), usage wherever it comes (a last chunk
with empty choices as vLLM/SGLang/Ollama send it, or on the finishing chunk), and error events
mid-stream. Where an engine sends no usage, counts are estimated from the text and marked so.

One pooled aiohttp session per endpoint (engine_http.py: HTTP/1.1 keep-alive, the endpoint's
headers and TLS roots, no cookies, bodies uncompressed). Closing the stream early closes the
response and its connection: the engines abort a request whose client went away. Once
`data: [DONE]` came, the answer is whole: the final chunk goes out at once, and the rest of the
body (the chunked encoding's end, which servers send after a turn of their own) is read in the
background unless it is already in, so the connection returns to the pool without the answer
waiting for it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, ValidationError

from services.common.errors import InvalidArgument, Unavailable
from services.common.streams import cancel_all
from services.router import openai_embed
from services.router.engine import (
    EmbeddingRequest,
    EmbeddingResult,
    EngineChunk,
    EngineRequest,
    estimate_tokens,
)
from services.router.engine_access import NO_ACCESS, EndpointAccess
from services.router.engine_http import EngineSession, call_timeout, check_identity, failure, open_session

MAX_EVENT_BYTES = 1 << 20  # one SSE line; a token's chunk is a few hundred bytes
MAX_STREAM_BYTES = 64 << 20  # a whole answer, like the Triton channel's message limit
MAX_ERROR_BYTES = 64 << 10
FINISH_TIMEOUT_S = 5.0  # reading a whole answer's body to its end, after [DONE]
_CALL_FAILED = (aiohttp.ClientError, TimeoutError)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Usage(_Lenient):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Delta(_Lenient):
    content: str | None = None


class _Choice(_Lenient):
    text: str | None = None
    delta: _Delta | None = None
    finish_reason: str | None = None


class StreamChunk(_Lenient):
    """One event of a streamed completion, in any flavour's shape."""

    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: Any = None

    @property
    def text(self) -> str:
        parts = []
        for c in self.choices:
            parts.append(c.text if c.text is not None else (c.delta.content if c.delta else None) or "")
        return "".join(parts)

    @property
    def finished(self) -> bool:
        return any(c.finish_reason for c in self.choices)


def request_body(req: EngineRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": req.model,
        "prompt": req.prompt,
        "max_tokens": req.max_tokens,
        "temperature": req.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if req.top_p > 0:
        body["top_p"] = req.top_p
    if req.top_k > 0:
        body["top_k"] = req.top_k  # an extension vLLM, SGLang and TGI accept
    if req.seed is not None:
        body["seed"] = req.seed
    if req.stop:
        body["stop"] = list(req.stop)
    return body


def error_message(status: int, body: bytes) -> str:
    """The engine's own words from an error body: OpenAI/vLLM/Ollama {"error": {"message"}},
    older vLLM {"message"}, TGI {"error": "..."}; else the raw text, shortened."""
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
        for found in (err, obj.get("message"), obj.get("detail")):
            if isinstance(found, str) and found:
                return found[:500]
    return body.decode("utf-8", "replace").strip()[:500] or f"HTTP {status}"


def http_error(address: str, model: str, status: int, body: bytes) -> Exception:
    message = error_message(status, body)
    if status in (400, 422):  # the request itself: another endpoint would refuse it too
        return InvalidArgument(f"model {model!r} rejected the request: {message}")
    if status in (401, 403):
        return Unavailable(f"backend {address} refused the router's credentials (HTTP {status}: {message}); "
                           "check the endpoint's headers")  # fmt: skip
    return Unavailable(f"backend {address} failed: HTTP {status}: {message}")


class SseLines:
    """`data:` payloads of a server-sent event stream, with every line and the total bounded."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._buf = b""
        self._total = 0

    def feed(self, data: bytes) -> list[bytes]:
        self._total += len(data)
        if self._total > MAX_STREAM_BYTES:
            raise Unavailable(f"backend {self.address} sent over {MAX_STREAM_BYTES} bytes for one answer")
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        if len(self._buf) > MAX_EVENT_BYTES:
            raise Unavailable(f"backend {self.address} sent an event over {MAX_EVENT_BYTES} bytes")
        out = []
        for line in lines:
            line = line.rstrip(b"\r")
            if line.startswith(b"data:"):  # comments (':'), event:, id:, blank lines carry nothing here
                out.append(line[5:].strip())
        return out


class CompletionStream:
    """Folds one stream's events into engine chunks (the final one carries the usage)."""

    def __init__(self, address: str, req: EngineRequest) -> None:
        self.address, self.req = address, req
        self.text_len = 0
        self.texts: list[str] = []
        self.usage: _Usage | None = None
        self.finished = False

    def event(self, payload: bytes) -> EngineChunk | None:
        try:
            chunk = StreamChunk.model_validate_json(payload)
        except ValidationError as exc:
            raise Unavailable(
                f"backend {self.address} sent a malformed event: {exc.errors()[0]['msg']}"
            ) from exc
        if chunk.error is not None:
            message = error_message(200, payload)
            raise Unavailable(f"model {self.req.model!r} failed on {self.address}: {message}")
        if chunk.usage is not None:
            self.usage = chunk.usage
        self.finished = self.finished or chunk.finished
        text = chunk.text
        if not text:
            return None
        self.texts.append(text)
        return EngineChunk(text, False)

    def final(self) -> EngineChunk:
        u = self.usage
        if u is not None and u.completion_tokens is not None and u.prompt_tokens is not None:
            return EngineChunk("", True, u.prompt_tokens, u.completion_tokens)
        text = "".join(self.texts)
        return EngineChunk("", True, estimate_tokens(self.req.prompt), estimate_tokens(text), estimated=True)


class OpenAIEngine:
    """Streams completions from OpenAI-compatible endpoints, one pooled session per endpoint."""

    def __init__(
        self,
        access: Callable[[str], EndpointAccess] = lambda _address: NO_ACCESS,
        max_connections: int = 256,
    ) -> None:
        self._access = access
        self._max_connections = max_connections
        self._sessions: dict[str, EngineSession] = {}
        self._finishing: set[asyncio.Task[None]] = set()  # whole answers' bodies read to their end

    def session(self, address: str) -> EngineSession:
        target = self._sessions.get(address)
        if target is None:
            target = self._sessions[address] = open_session(
                address, self._access(address), self._max_connections
            )
        return target

    async def close(self) -> None:
        await cancel_all(list(self._finishing))
        sessions, self._sessions = list(self._sessions.values()), {}
        for target in sessions:
            await target.session.close()

    async def embed(self, address: str, req: EmbeddingRequest, timeout: float | None) -> EmbeddingResult:
        """The batch's vectors from the endpoint's `/v1/embeddings` (openai_embed.py)."""

        def errors(status: int, body: bytes) -> Exception:
            return http_error(address, req.model, status, body)

        return await openai_embed.embed(self.session(address), address, req, timeout, errors)

    async def stream(
        self, address: str, req: EngineRequest, timeout: float | None
    ) -> AsyncIterator[EngineChunk]:
        """Yields text chunks, then a final one with the usage. Errors -> Unavailable (retryable)
        or InvalidArgument (the engine refused the request itself)."""
        deadline = time.monotonic() + timeout if timeout else None
        target = self.session(address)
        try:
            response = await _post(target, req, timeout)
        except _CALL_FAILED as exc:
            raise Unavailable(f"backend {address} failed: {failure(exc)}") from exc
        whole = [False]
        try:
            if response.status != 200:
                raise http_error(address, req.model, response.status, await _read_bounded(response))
            check_identity(address, response)
            async for chunk in self._events(address, req, response.content.iter_any(), deadline, whole):
                yield chunk
        except _CALL_FAILED as exc:
            raise Unavailable(f"backend {address} failed mid-stream: {failure(exc)}") from exc
        finally:
            if not whole[0]:  # early: drops the connection, so the engine aborts the request
                response.close()
            elif response.content.is_eof():  # the body's end came with [DONE]: back to the pool
                response.release()
            else:  # the rest of the body is read off the answer's path
                task = asyncio.create_task(_finish(response))
                self._finishing.add(task)
                task.add_done_callback(self._finishing.discard)

    @staticmethod
    async def _events(
        address: str,
        req: EngineRequest,
        body: AsyncIterator[bytes],
        deadline: float | None,
        whole: list[bool],
    ) -> AsyncIterator[EngineChunk]:
        lines, stream = SseLines(address), CompletionStream(address, req)
        async for data in body:
            for payload in lines.feed(data):
                if payload == b"[DONE]":
                    whole[0] = True
                    yield stream.final()
                    return
                chunk = stream.event(payload)
                if chunk is not None:
                    yield chunk
            if deadline is not None and time.monotonic() > deadline:
                raise Unavailable(f"backend {address} did not finish within the deadline")
        if stream.finished:  # a finish_reason without [DONE]: some servers just close
            yield stream.final()
            return
        raise Unavailable(f"backend {address} closed the stream before the final response")


async def _post(target: EngineSession, req: EngineRequest, timeout: float | None) -> aiohttp.ClientResponse:
    """POSTs the request and waits for the answer's head; `req.on_sent` runs in between, once
    the request is written (two loop turns on a pooled connection: see below), while the engine
    works. If it raises, the request is cancelled (an answer already there is closed)."""
    posting = target.session.post(
        target.completions, json=request_body(req), allow_redirects=False,
        headers={"x-request-id": req.request_id} if req.request_id else None,
        timeout=call_timeout(timeout),
    )  # fmt: skip
    if req.on_sent is None:
        return await posting
    task = asyncio.ensure_future(posting)
    # Two turns: the POST's first step writes the head and schedules the body's writer (a task
    # of its own before Python 3.12), the second writes the body.
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    try:
        req.on_sent()
    except BaseException:
        task.cancel()
        task.add_done_callback(_close_answer)
        raise
    return await task


def _close_answer(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().close()


async def _finish(response: aiohttp.ClientResponse) -> None:
    """Reads what is left of a whole answer's body (the chunked encoding's end), so releasing the
    response returns its connection to the pool instead of dropping it (a new TCP connection
    per request otherwise); a server that keeps sending past [DONE], or stalls, is cut off."""
    try:
        left = MAX_ERROR_BYTES
        async with asyncio.timeout(FINISH_TIMEOUT_S):
            async for data in response.content.iter_any():
                left -= len(data)
                if left < 0:
                    break
    except _CALL_FAILED:
        pass  # the answer was whole; only the connection is lost
    finally:
        response.release()  # to the pool at the body's end; closed short of it


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    body = b""
    async for data in response.content.iter_any():
        body += data
        if len(body) >= MAX_ERROR_BYTES:
            return body[:MAX_ERROR_BYTES]
    return body
