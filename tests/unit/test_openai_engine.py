"""The OpenAI HTTP engine client against a local server replaying recorded answers
(tests/helpers/http_replay.py): the request it sends, how it folds a stream into chunks, usage
from the engine or estimated, errors, bounds, closing the stream early closing the upstream
response, the connection going back to the pool once an answer is whole, and the `on_sent` hook
(tests/unit/test_router_dispatch_engines.py has the dispatcher over the engines)."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import ssl

import pytest

from services.common.errors import InvalidArgument, Unavailable
from services.devtools.certs import make_certs
from services.router import engine_access, openai_engine
from services.router.engine import EngineChunk, EngineRequest
from services.router.engine_access import EndpointAccess
from services.router.openai_engine import OpenAIEngine
from tests.helpers.http_replay import ReplayServer, Reply

REQ = EngineRequest(model="m", prompt="Summarise the ledger policy", max_tokens=8, request_id="req-1")


def sse(*events: object, done: bool = True) -> bytes:
    lines = [f"data: {json.dumps(e)}\n\n" for e in events]
    return ("".join(lines) + ("data: [DONE]\n\n" if done else "")).encode()


def text_chunk(text: str, finish: str | None = None) -> dict:
    return {"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": finish}]}


def answering(reply: Reply):
    return ReplayServer(lambda _seen: reply)


async def collect(engine: OpenAIEngine, address: str, req: EngineRequest = REQ):
    try:
        return [c async for c in engine.stream(address, req, 10)]
    finally:
        await engine.close()


async def replay(reply: Reply) -> list[EngineChunk]:
    async with answering(reply) as server:
        return await collect(OpenAIEngine(), server.url)


async def test_sends_a_streamed_completion_with_usage_and_the_endpoints_headers():
    body = sse(text_chunk("Hel"), text_chunk("lo", "stop"), {"choices": [], "usage": {
        "prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}})  # fmt: skip
    async with answering(Reply(pieces=[body])) as server:
        access = {f"{server.url}/v1": EndpointAccess(headers=(("authorization", "Bearer k1"),))}
        engine = OpenAIEngine(access=lambda a: access.get(a, engine_access.NO_ACCESS))
        chunks = await collect(engine, f"{server.url}/v1")
    assert [c.text for c in chunks] == ["Hel", "lo", ""]
    assert chunks[-1] == EngineChunk("", True, 7, 2, estimated=False)
    (request,) = server.seen
    assert request.method == "POST" and request.url == f"{server.url}/v1/completions"
    assert request.headers["authorization"] == "Bearer k1" and request.headers["x-request-id"] == "req-1"
    assert request.headers["accept-encoding"] == "identity"  # the byte bounds count what arrives
    body = json.loads(request.body)
    assert body == {
        "model": "m", "prompt": REQ.prompt, "max_tokens": 8, "temperature": 0.0, "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip


async def test_without_usage_the_counts_are_estimated_and_marked():
    chunks = await replay(Reply(pieces=[sse(text_chunk("four"), text_chunk(" more", "length"))]))
    final = chunks[-1]
    assert final.final and final.estimated
    assert final.input_tokens == openai_engine.estimate_tokens(REQ.prompt)
    assert final.output_tokens == openai_engine.estimate_tokens("four more")


async def test_chat_shaped_deltas_and_a_close_after_finish_reason_are_accepted():
    chat = [
        {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
    ]  # fmt: skip
    chunks = await replay(Reply(pieces=[sse(*chat, done=False)]))
    assert [c.text for c in chunks] == ["Hi", ""] and chunks[-1] == EngineChunk("", True, 3, 1)


@pytest.mark.parametrize(
    ("status", "body", "error", "words"),
    [
        (400, {"error": {"message": "max_tokens is too large", "type": "BadRequestError"}}, InvalidArgument,
         "rejected the request: max_tokens is too large"),
        (422, {"error": "Input validation error: `inputs` must not be empty", "error_type": "validation"},
         InvalidArgument, "Input validation error"),
        (404, {"object": "error", "message": "The model `m` does not exist."}, Unavailable, "does not exist"),
        (401, {"error": {"message": "invalid api key"}}, Unavailable, "check the endpoint's headers"),
        (503, "upstream overloaded", Unavailable, "HTTP 503: upstream overloaded"),
        (307, "", Unavailable, "HTTP 307"),  # a redirect is not followed
    ],
)  # fmt: skip
async def test_http_errors_say_what_the_engine_said(status, body, error, words):
    content = body if isinstance(body, str) else json.dumps(body)
    headers = {"location": "http://127.0.0.1:1/v1/completions"}
    with pytest.raises(error, match=words.replace("`", ".")):
        await replay(Reply(status, [content.encode()], headers))


async def test_broken_streams_are_unavailable():
    cases = {
        "closed the stream before the final response": sse(text_chunk("partial"), done=False),
        "malformed event": b"data: {not json\n\n",
        "failed on": sse(text_chunk("a"), {"error": {"message": "engine died", "code": 500}}),
    }
    for words, content in cases.items():
        with pytest.raises(Unavailable, match=words):
            await replay(Reply(pieces=[content]))

    with pytest.raises(Unavailable, match="failed: ConnectError"):
        await collect(OpenAIEngine(), "http://127.0.0.1:1")


async def test_an_endless_line_is_refused(monkeypatch):
    monkeypatch.setattr(openai_engine, "MAX_EVENT_BYTES", 1024)
    async with answering(Reply(pieces=[b"data: " + b"x" * 600, b"y" * 600], hang=True)) as server:
        with pytest.raises(Unavailable, match="event over 1024 bytes"):
            await collect(OpenAIEngine(), server.url)
        await asyncio.wait_for(server.dropped.wait(), 10)  # the upstream response was closed


async def test_error_bodies_are_read_up_to_a_bound(monkeypatch):
    monkeypatch.setattr(openai_engine, "MAX_ERROR_BYTES", 1000)
    async with answering(Reply(503, [b"x" * 800, b"y" * 800], hang=True)) as server:
        with pytest.raises(Unavailable, match=r"HTTP 503: x{500}$"):  # the message is cut at 500
            await collect(OpenAIEngine(), server.url)
        await asyncio.wait_for(server.dropped.wait(), 10)  # not read to an end that never comes


async def test_a_compressed_answer_is_refused_not_expanded():
    # The router asks for identity: a bomb of a few KiB gzipped would otherwise expand past the
    # byte bounds before they could count it.
    body = gzip.compress(sse(text_chunk("a" * 100_000, "stop")))
    headers = {"content-type": "text/event-stream", "content-encoding": "gzip"}
    with pytest.raises(Unavailable, match="Content-Encoding 'gzip'; the router asks for identity"):
        await replay(Reply(pieces=[body], headers=headers))


async def test_closing_the_stream_early_closes_the_upstream_response():
    pieces = [sse(text_chunk("one"), done=False), sse(text_chunk("two"), done=False), b"data: [DONE]\n\n"]
    async with answering(Reply(pieces=pieces, hang=True)) as server:
        engine = OpenAIEngine()
        agen = engine.stream(server.url, REQ, 10)
        first = await agen.__anext__()
        assert first.text == "one" and not server.dropped.is_set()
        await agen.aclose()
        await asyncio.wait_for(server.dropped.wait(), 10)  # the engine sees its client go away
        await engine.close()


def held_end(*pieces: bytes) -> Reply:
    """A body whose end (after [DONE]) comes only once `end_after` is set, as a server sends the
    chunked encoding's end after a turn of its own."""
    return Reply(pieces=list(pieces), end_after=asyncio.Event())


async def test_the_final_chunk_does_not_wait_for_the_bodys_end():
    reply = held_end(
        sse(text_chunk("one"), {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
    )
    async with answering(reply) as server:
        engine = OpenAIEngine()
        try:
            chunks = await asyncio.wait_for(collect_open(engine, server.url), 10)
            assert (
                [c.text for c in chunks] == ["one", ""] and chunks[-1].final and chunks[-1].output_tokens == 1
            )
            assert not server.ended.is_set() and not server.dropped.is_set()  # still being read, off the path
            reply.end_after.set()
            await asyncio.wait_for(server.ended.wait(), 10)
            for _ in range(1000):  # then released: the connection goes back to the pool
                if not engine._finishing:
                    break
                await asyncio.sleep(0.01)
            reply.end_after = None
            await asyncio.wait_for(collect_open(engine, server.url), 10)
        finally:
            await engine.close()
    first, second = server.seen
    assert second.peer_port == first.peer_port and not server.dropped.is_set()


async def test_closing_the_engine_stops_reading_whole_answers_ends():
    async with answering(held_end(sse(text_chunk("one")))) as server:
        engine = OpenAIEngine()
        await asyncio.wait_for(collect_open(engine, server.url), 10)
        await asyncio.wait_for(engine.close(), 10)
        await asyncio.wait_for(server.dropped.wait(), 10)


async def test_tls_endpoints_are_verified_with_the_endpoints_roots(tmp_path):
    certs = make_certs(tmp_path, services=("engine",), agents=())
    leaf = certs.services["engine"]
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(leaf.cert, leaf.key)
    async with ReplayServer(lambda _seen: Reply(pieces=[sse(text_chunk("ok", "stop"))]), tls) as server:
        with pytest.raises(Unavailable, match=r"failed: ConnectError: .*certificate verify failed"):
            await collect(OpenAIEngine(), server.url)  # not the system's roots, nor certifi's
        engine = OpenAIEngine(lambda _a: EndpointAccess(ca_file=str(certs.ca_cert)))
        assert [c.text for c in await collect(engine, server.url)] == ["ok", ""]


async def collect_open(engine: OpenAIEngine, address: str) -> list[EngineChunk]:
    return [c async for c in engine.stream(address, REQ, 10)]


def test_engine_access_flags_are_parsed_and_bad_ones_refused(tmp_path):
    address, access = engine_access.parse_engine_access("https://vllm:8000,header.Authorization=Bearer k")
    assert address == "https://vllm:8000" and access.headers == (("authorization", "Bearer k"),)
    for text, words in (
        ("vllm/v1,header.a=b", "expected BASE_URL .* or HOST:PORT"),
        ("http://v:1,header.bad name=x", "needs a token name"),
        ("http://v:1,ca=/nonexistent.pem", "not a readable file"),
        ("http://v:1,tls=true", "not header.K=V, ca=PATH$"),  # an URL's scheme says it
        ("10.0.0.5:8001,header.token-bin=x", "needs a token name"),  # gRPC binary headers: no
        ("10.0.0.5:8001,mode=fast", "or tls=true"),
    ):
        with pytest.raises(ValueError, match=words):
            engine_access.parse_engine_access(text)
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ValueError, match="ca is for TLS endpoints"):
        engine_access.parse_engine_access(f"http://v:1,ca={ca}")
    with pytest.raises(ValueError, match="ca is for TLS endpoints"):
        engine_access.parse_engine_access(f"10.0.0.5:8001,ca={ca}")
    # A Triton's gRPC address as the pool lists it: headers (a restricted protocol's token), TLS.
    address, access = engine_access.parse_engine_access(
        f"10.0.0.5:8001,header.triton-grpc-protocol-key=v,tls=true,ca={ca}"
    )
    assert address == "10.0.0.5:8001" and access.headers == (("triton-grpc-protocol-key", "v"),)
    assert access.tls and access.ca_file == str(ca)
    assert not engine_access.parse_engine_access("https://v:1")[1].tls  # tls is a Triton setting


async def test_a_cookie_an_engine_sets_never_rides_on_a_later_request():
    """The client per endpoint is shared by every caller: nothing one response sets may reach
    another caller's request."""
    headers = {"content-type": "text/event-stream", "set-cookie": "session=alice-secret; Path=/"}
    async with answering(Reply(pieces=[sse(text_chunk("ok", "stop"))], headers=headers)) as server:
        engine = OpenAIEngine()
        try:
            for _ in range(2):
                texts = [c.text async for c in engine.stream(server.url, REQ, 10)]
                assert texts[0] == "ok"
        finally:
            await engine.close()
    assert len(server.seen) == 2
    assert "cookie" not in server.seen[1].headers


# --- the call's journal entry is written while the engine works -------------------------------


async def test_on_sent_runs_once_before_the_first_chunk():
    body = sse(text_chunk("Hel"), text_chunk("lo", "stop"))
    async with ReplayServer(lambda _seen: Reply(pieces=[body])) as server:
        events: list[str] = []
        req = dataclasses.replace(REQ, on_sent=lambda: events.append("sent"))
        engine = OpenAIEngine()
        try:
            async for _ in engine.stream(server.url, req, 10):
                events.append("chunk")
        finally:
            await engine.close()
    assert events == ["sent", "chunk", "chunk", "chunk"]  # two texts and the final
    assert len(server.seen) == 1


async def test_a_failing_on_sent_cancels_the_request_and_raises():
    async with ReplayServer(lambda _seen: Reply(pieces=[sse(text_chunk("x", "stop"))])) as server:

        def refuse() -> None:
            raise Unavailable("the call's start could not be recorded durably")

        engine = OpenAIEngine()
        try:
            with pytest.raises(Unavailable, match="recorded durably"):
                async for _ in engine.stream(server.url, dataclasses.replace(REQ, on_sent=refuse), 10):
                    pytest.fail("no chunk may come after a failed on_sent")
        finally:
            await engine.close()
