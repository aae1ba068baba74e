"""Conformance of the router's OpenAI engine client with each flavour's streaming format.

Each transcript is what the server writes for a streamed `/v1/completions` (or chat) request,
built from the project's documentation and source: chunk shapes, where usage comes (a last
chunk with empty `choices`, on the finishing chunk, or not at all), how the stream ends, and
error bodies. A local server (tests/helpers/http_replay.py) replays them in small, odd-sized
pieces, each flushed on its own, so events split across reads.
A flavour that changes its format breaks here, not in production.

- vLLM: docs.vllm.ai serving/openai_compatible_server (usage chunk with `choices: []` under
  `stream_options.include_usage`; errors `{"error": {"message", "type", "param", "code"}}`,
  before 0.9 `{"object": "error", "message", ...}`; a failure mid-stream is a `data:` event
  holding `{"error": {...}}`).
- SGLang: docs.sglang.io OpenAI-compatible APIs (vLLM's shapes; `matched_stop` per choice).
- TGI: huggingface.co/docs/text-generation-inference messages API (OpenAI shapes; completion
  chunks carry `finish_reason: ""` until the end and usage on the finishing chunk; errors
  `{"error": "...", "error_type": "..."}`, 422 for validation).
- Ollama: docs.ollama.com/api/openai-compatibility (`system_fingerprint: "fp_ollama"`, usage
  chunk with include_usage; errors `{"error": {"message", "type": "api_error", ...}}`).
- Triton's OpenAI frontend: triton-inference-server/server python/openai (`usage: null` on
  every chunk and no usage with the TensorRT-LLM backend; FastAPI errors `{"detail": "..."}`).
"""

from __future__ import annotations

import json

import pytest

from services.common.errors import InvalidArgument, Unavailable
from services.router.engine import EngineRequest, estimate_tokens
from services.router.openai_engine import OpenAIEngine
from tests.helpers.http_replay import ReplayServer, Reply

REQ = EngineRequest(model="m", prompt="Say hello", max_tokens=3)


def events(*objs: object, done: bool = True) -> bytes:
    out = "".join(f"data: {json.dumps(o)}\n\n" for o in objs)
    return (out + ("data: [DONE]\n\n" if done else "")).encode()


def vllm_text(text: str, finish: str | None = None) -> dict:
    return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}],
            "usage": None}  # fmt: skip


VLLM = events(
    vllm_text("Hel"), vllm_text("lo"), vllm_text("!", "length"),
    {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m", "choices": [],
     "usage": {"prompt_tokens": 4, "total_tokens": 7, "completion_tokens": 3}},
)  # fmt: skip
VLLM_CHAT = events(
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]},
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"content": "Hello"}, "logprobs": None, "finish_reason": None}]},
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"content": "!"}, "logprobs": None, "finish_reason": "stop", "stop_reason": None}]},
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
     "usage": {"prompt_tokens": 4, "total_tokens": 6, "completion_tokens": 2}},
)  # fmt: skip
SGLANG = events(
    {"id": "a1", "object": "text_completion", "created": 1, "model": "m", "usage": None,
     "choices": [{"index": 0, "text": "Hello", "logprobs": None, "finish_reason": None, "matched_stop": None}]},
    {"id": "a1", "object": "text_completion", "created": 1, "model": "m", "usage": None,
     "choices": [{"index": 0, "text": "!", "logprobs": None, "finish_reason": "stop", "matched_stop": 2}]},
    {"id": "a1", "object": "text_completion", "created": 1, "model": "m", "choices": [],
     "usage": {"prompt_tokens": 4, "total_tokens": 6, "completion_tokens": 2}},
)  # fmt: skip
TGI = events(
    {"id": "", "object": "text_completion", "created": 1, "model": "m", "system_fingerprint": "3.0.1-native",
     "choices": [{"index": 0, "text": "Hello", "logprobs": None, "finish_reason": ""}]},
    {"id": "", "object": "text_completion", "created": 1, "model": "m", "system_fingerprint": "3.0.1-native",
     "choices": [{"index": 0, "text": "!", "logprobs": None, "finish_reason": "eos_token"}],
     "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}},
)  # fmt: skip
OLLAMA = events(
    {"id": "cmpl-9", "object": "text_completion", "created": 1, "model": "llama3", "system_fingerprint": "fp_ollama",
     "choices": [{"text": "Hello", "index": 0, "finish_reason": None}]},
    {"id": "cmpl-9", "object": "text_completion", "created": 1, "model": "llama3", "system_fingerprint": "fp_ollama",
     "choices": [{"text": "", "index": 0, "finish_reason": "stop"}]},
    {"id": "cmpl-9", "object": "text_completion", "created": 1, "model": "llama3", "system_fingerprint": "fp_ollama",
     "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}},
)  # fmt: skip
TRITON_OPENAI = events(
    {"id": "cmpl-t", "choices": [{"finish_reason": None, "index": 0, "logprobs": None, "text": "Hello"}],
     "created": 1, "model": "ensemble", "system_fingerprint": None, "object": "text_completion", "usage": None},
    {"id": "cmpl-t", "choices": [{"finish_reason": "stop", "index": 0, "logprobs": None, "text": " there"}],
     "created": 1, "model": "ensemble", "system_fingerprint": None, "object": "text_completion", "usage": None},
)  # fmt: skip


def pieces(body: bytes, size: int = 7) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


async def replay(status: int, body: bytes) -> list:
    async with ReplayServer(lambda _seen: Reply(status, pieces(body))) as server:
        engine = OpenAIEngine()
        try:
            return [c async for c in engine.stream(server.url, REQ, 10)]
        finally:
            await engine.close()


@pytest.mark.parametrize(
    ("flavour", "body", "text", "usage"),
    [
        ("vllm", VLLM, "Hello!", (4, 3)),
        ("vllm-chat", VLLM_CHAT, "Hello!", (4, 2)),
        ("sglang", SGLANG, "Hello!", (4, 2)),
        ("tgi", TGI, "Hello!", (4, 2)),
        ("ollama", OLLAMA, "Hello", (4, 1)),
    ],
)
async def test_each_flavours_stream_gives_the_text_and_the_engines_usage(flavour, body, text, usage):
    chunks = await replay(200, body)
    assert "".join(c.text for c in chunks) == text
    assert [c.final for c in chunks].count(True) == 1 and chunks[-1].final
    assert (chunks[-1].input_tokens, chunks[-1].output_tokens, chunks[-1].estimated) == (*usage, False)


async def test_triton_openai_frontend_without_usage_is_estimated():
    chunks = await replay(200, TRITON_OPENAI)
    assert "".join(c.text for c in chunks) == "Hello there"
    final = chunks[-1]
    assert final.estimated and final.output_tokens == estimate_tokens("Hello there")


async def test_tgi_empty_finish_reason_is_not_the_end():
    # TGI's intermediate chunks say finish_reason "", and a stream cut after one is broken.
    first_event = TGI.split(b"\n\n")[0] + b"\n\n"
    assert b'"finish_reason": ""' in first_event
    with pytest.raises(Unavailable, match="closed the stream before the final response"):
        await replay(200, first_event)


@pytest.mark.parametrize(
    ("flavour", "status", "body", "error", "words"),
    [
        ("vllm", 400, {"error": {"message": "This model's maximum context length is 8192 tokens.",
                                 "type": "BadRequestError", "param": None, "code": 400}},
         InvalidArgument, "maximum context length is 8192"),
        ("vllm<0.9", 404, {"object": "error", "message": "The model `x` does not exist.", "type": "NotFoundError",
                           "param": None, "code": 404}, Unavailable, "The model .x. does not exist"),
        ("sglang", 400, {"object": "error", "message": "max_tokens must be positive", "type": "BadRequestError",
                         "param": None, "code": 400}, InvalidArgument, "max_tokens must be positive"),
        ("tgi", 422, {"error": "Input validation error: `max_new_tokens` must be strictly positive",
                      "error_type": "validation"}, InvalidArgument, "Input validation error"),
        ("tgi", 429, {"error": "Model is overloaded", "error_type": "overloaded"}, Unavailable, "Model is overloaded"),
        ("ollama", 404, {"error": {"message": 'model "x" not found, try pulling it first', "type": "api_error",
                                   "param": None, "code": None}}, Unavailable, "try pulling it first"),
        ("triton-openai", 400, {"detail": "Unknown model: x"}, InvalidArgument, "Unknown model: x"),
    ],
)  # fmt: skip
async def test_each_flavours_error_body_is_read(flavour, status, body, error, words):
    with pytest.raises(error, match=words):
        await replay(status, json.dumps(body).encode())


async def test_a_mid_stream_error_event_is_unavailable():
    vllm = events(vllm_text("Hel"), {"error": {"object": "error", "message": "engine dead", "type": "InternalServerError",
                                               "code": 500}}, done=False)  # fmt: skip
    tgi = events({"choices": [{"index": 0, "text": "He", "finish_reason": ""}]},
                 {"error": "Request failed during generation: CUDA OOM", "error_type": "generation"}, done=False)  # fmt: skip
    for body, words in ((vllm, "engine dead"), (tgi, "CUDA OOM")):
        with pytest.raises(Unavailable, match=words):
            await replay(200, body)
