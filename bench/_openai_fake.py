"""A minimal OpenAI-compatible engine for bench/vs_litellm.py: POST /v1/chat/completions answers
`max_tokens` one-word deltas at once (streamed as OpenAI's SSE, or whole), GET /v1/models. No
model, no waiting: what a gateway in front of it adds is all there is to see.

Usage: python bench/_openai_fake.py  (prints its port on stdout, serves until killed)
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

WORDS = ("the", "ledger", "policy", "keeps", "every", "entry", "balanced", "and", "audited")


def _chunk(cid: str, model: str, delta: dict, finish: str | None = None) -> bytes:
    body = {
        "id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }  # fmt: skip
    return f"data: {json.dumps(body)}\n\n".encode()


async def chat(request: Request) -> Response:
    req = json.loads(await request.body())
    n, model, cid = int(req.get("max_tokens") or 8), req.get("model", "fake"), f"chatcmpl-{time.time_ns()}"
    words = [f" {WORDS[i % len(WORDS)]}" for i in range(n)]
    usage = {"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n}
    if not req.get("stream"):
        message = {"role": "assistant", "content": "".join(words)}
        return JSONResponse(
            {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
             "choices": [{"index": 0, "message": message, "finish_reason": "length"}], "usage": usage}
        )  # fmt: skip

    async def events():
        yield _chunk(cid, model, {"role": "assistant", "content": ""})
        for word in words:
            yield _chunk(cid, model, {"content": word})
        yield _chunk(cid, model, {}, "length")
        if (req.get("stream_options") or {}).get("include_usage"):
            body = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                    "choices": [], "usage": usage}  # fmt: skip
            yield f"data: {json.dumps(body)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def models(request: Request) -> Response:
    return JSONResponse(
        {"object": "list", "data": [{"id": "llama-3-8b", "object": "model", "owned_by": "fake"}]}
    )


async def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    app = Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)]
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, loop="none"))
    await server.serve(sockets=[sock])


if __name__ == "__main__":
    asyncio.run(main())
