"""The bench's relay floors: the bare Python HTTP relay (bench/_http_relay.py) relays the engine's
bytes unchanged through the router's own engine client, and the mTLS gRPC relay takes router-1's
own TLS files from its command line."""

import asyncio
import json

from bench._http_relay import HEALTH_PATH, chat_url, relay_app
from bench.router_overhead import tls_flags_of
from services.router.engine_access import NO_ACCESS
from services.router.engine_http import open_session
from tests.helpers.http_replay import ReplayServer, Reply

SSE = [b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n', b"data: [DONE]\n\n"]
CHAT = {"type": "http", "path": "/v1/chat/completions", "method": "POST"}


class Recorder:
    def __init__(self, body: bytes) -> None:
        self.incoming = [{"type": "http.request", "body": body[:5], "more_body": True},
                         {"type": "http.request", "body": body[5:], "more_body": False}]  # fmt: skip
        self.sent: list[dict] = []
        self.answering = asyncio.Event()  # a first piece of the answer's body was sent

    async def receive(self) -> dict:
        return self.incoming.pop(0)

    async def send(self, message: dict) -> None:
        self.sent.append(message)
        if message.get("more_body"):
            self.answering.set()


async def test_the_http_relay_posts_the_whole_body_to_the_engine_and_relays_its_bytes():
    body = json.dumps({"model": "m", "stream": True, "messages": []}).encode()
    async with ReplayServer(lambda _seen: Reply(pieces=SSE)) as server:
        engine = open_session(server.url + "/v1", NO_ACCESS, 4)  # the router's engine client
        app = relay_app(engine, chat_url(server.url + "/v1"))
        peers = [Recorder(body), Recorder(body)]
        for peer in peers:
            await app(CHAT, peer.receive, peer.send)
        await engine.session.close()
    first, second = server.seen
    assert first.url.endswith("/v1/chat/completions") and first.body == body
    assert first.headers["content-type"] == "application/json"
    assert first.headers["accept-encoding"] == "identity"  # the router's session: bodies as sent
    assert second.peer_port == first.peer_port  # the first answer, read whole, left its connection pooled
    start, *chunks = peers[0].sent
    assert start == {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/event-stream")],
    }
    assert b"".join(c["body"] for c in chunks) == b"".join(SSE)
    assert chunks[-1] == {"type": "http.response.body", "body": b""}  # the end of the answer


async def test_the_http_relay_drops_the_engines_connection_when_its_caller_goes_away():
    async with ReplayServer(lambda _seen: Reply(pieces=SSE[:1], hang=True)) as server:
        engine = open_session(server.url, NO_ACCESS, 4)
        peer = Recorder(b"{}")
        relaying = asyncio.create_task(relay_app(engine, chat_url(server.url))(CHAT, peer.receive, peer.send))
        try:
            await asyncio.wait_for(peer.answering.wait(), 5)
            relaying.cancel()  # as the server cancels an app whose client went away
            await asyncio.wait_for(server.dropped.wait(), 5)  # the engine saw its connection close
        finally:
            await engine.session.close()  # (else the engine's hanging answer outlives a failure)
    assert peer.sent[1]["body"] == SSE[0]


async def test_the_http_relay_answers_envoys_health_check_itself():
    async with ReplayServer(lambda _seen: Reply(pieces=SSE)) as server:
        engine = open_session(server.url, NO_ACCESS, 4)
        peer = Recorder(b"")
        await relay_app(engine, chat_url(server.url))(
            {"type": "http", "path": HEALTH_PATH}, peer.receive, peer.send
        )
        await engine.session.close()
    assert server.seen == [] and peer.sent[0]["status"] == 200


def test_the_tls_relay_takes_the_routers_tls_files_from_its_command_line():
    argv = ["python", "-m", "services.router", "--port", "1", "--tls-cert", "r.pem", "--tls-key", "r.key",
            "--tls-ca", "ca.pem", "--jwt-public-key", "j.pem"]  # fmt: skip
    assert tls_flags_of(argv) == ["--tls-cert", "r.pem", "--tls-key", "r.key", "--tls-ca", "ca.pem"]
    assert tls_flags_of(["python", "-m", "services.router", "--port", "1"]) == []  # plaintext: none
