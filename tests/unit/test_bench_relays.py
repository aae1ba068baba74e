"""The bench's relay floors: the bare Python HTTP relay (bench/_http_relay.py) relays the engine's
bytes unchanged, and the mTLS gRPC relay takes router-1's own TLS files from its command line."""

import json

import httpx
import pytest

from bench._http_relay import HEALTH_PATH, relay_app
from bench.router_overhead import tls_flags_of

SSE = [b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n', b"data: [DONE]\n\n"]


class Recorder:
    def __init__(self, body: bytes) -> None:
        self.incoming = [{"type": "http.request", "body": body[:5], "more_body": True},
                         {"type": "http.request", "body": body[5:], "more_body": False}]  # fmt: skip
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        return self.incoming.pop(0)

    async def send(self, message: dict) -> None:
        self.sent.append(message)


def engine(seen: list[httpx.Request]) -> httpx.AsyncClient:
    async def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=httpx.ByteStream(b"".join(SSE))
        )

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


@pytest.mark.asyncio
async def test_the_http_relay_posts_the_whole_body_to_the_engine_and_relays_its_bytes():
    seen: list[httpx.Request] = []
    body = json.dumps({"model": "m", "stream": True, "messages": []}).encode()
    peer = Recorder(body)
    async with engine(seen) as client:
        app = relay_app(client, "http://engine:1/v1/chat/completions")
        await app({"type": "http", "path": "/v1/chat/completions", "method": "POST"}, peer.receive, peer.send)
    (request,) = seen
    assert str(request.url) == "http://engine:1/v1/chat/completions" and request.content == body
    start, *chunks = peer.sent
    assert start == {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/event-stream")],
    }
    assert b"".join(c["body"] for c in chunks) == b"".join(SSE)
    assert chunks[-1] == {"type": "http.response.body", "body": b""}  # the end of the answer


@pytest.mark.asyncio
async def test_the_http_relay_answers_envoys_health_check_itself():
    seen: list[httpx.Request] = []
    peer = Recorder(b"")
    async with engine(seen) as client:
        await relay_app(client, "http://engine:1/x")(
            {"type": "http", "path": HEALTH_PATH}, peer.receive, peer.send
        )
    assert seen == [] and peer.sent[0]["status"] == 200


def test_the_tls_relay_takes_the_routers_tls_files_from_its_command_line():
    argv = ["python", "-m", "services.router", "--port", "1", "--tls-cert", "r.pem", "--tls-key", "r.key",
            "--tls-ca", "ca.pem", "--jwt-public-key", "j.pem"]  # fmt: skip
    assert tls_flags_of(argv) == ["--tls-cert", "r.pem", "--tls-key", "r.key", "--tls-ca", "ca.pem"]
    assert tls_flags_of(["python", "-m", "services.router", "--port", "1"]) == []  # plaintext: none
