"""The OpenAI HTTP engine client over scripted HTTP (httpx.MockTransport): the request it sends,
how it folds a stream into chunks, usage from the engine or estimated, errors, bounds, and
closing the stream early closing the upstream response. The dispatcher picks an engine by the
endpoint's kind and fails over across kinds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from services.common.errors import InvalidArgument, Unavailable
from services.router import engine_access, openai_engine
from services.router.dispatch import Dispatcher
from services.router.engine import EngineChunk, EngineRequest
from services.router.engine_access import EndpointAccess
from services.router.flow import FlowController
from services.router.openai_engine import OpenAIEngine
from services.router.scheduling import Candidate, Scheduler

REQ = EngineRequest(model="m", prompt="Summarise the ledger policy", max_tokens=8, request_id="req-1")


def sse(*events: object, done: bool = True) -> bytes:
    lines = [f"data: {json.dumps(e)}\n\n" for e in events]
    return ("".join(lines) + ("data: [DONE]\n\n" if done else "")).encode()


def text_chunk(text: str, finish: str | None = None) -> dict:
    return {"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": finish}]}


class Recorded(httpx.AsyncByteStream):
    """A response body in pieces; remembers whether the client closed it."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for p in self.pieces:
            yield p

    async def aclose(self) -> None:
        self.closed = True


def engine_for(handler, **kw) -> OpenAIEngine:
    return OpenAIEngine(transport=httpx.MockTransport(handler), **kw)


async def collect(engine: OpenAIEngine, address: str = "http://eng:8000", req: EngineRequest = REQ):
    try:
        return [c async for c in engine.stream(address, req, 10)]
    finally:
        await engine.close()


async def test_sends_a_streamed_completion_with_usage_and_the_endpoints_headers():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = sse(text_chunk("Hel"), text_chunk("lo", "stop"), {"choices": [], "usage": {
            "prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}})  # fmt: skip
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    access = {"http://eng:8000/v1": EndpointAccess(headers=(("authorization", "Bearer k1"),))}
    engine = engine_for(handler, access=lambda a: access.get(a, engine_access.NO_ACCESS))
    chunks = await collect(engine, "http://eng:8000/v1")
    assert [c.text for c in chunks] == ["Hel", "lo", ""]
    assert chunks[-1] == EngineChunk("", True, 7, 2, estimated=False)
    (request,) = seen
    assert str(request.url) == "http://eng:8000/v1/completions"
    assert request.headers["authorization"] == "Bearer k1" and request.headers["x-request-id"] == "req-1"
    body = json.loads(request.content)
    assert body == {
        "model": "m", "prompt": REQ.prompt, "max_tokens": 8, "temperature": 0.0, "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip


async def test_without_usage_the_counts_are_estimated_and_marked():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(text_chunk("four"), text_chunk(" more", "length")))

    chunks = await collect(engine_for(handler))
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

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(*chat, done=False))

    chunks = await collect(engine_for(handler))
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
    ],
)  # fmt: skip
async def test_http_errors_say_what_the_engine_said(status, body, error, words):
    def handler(request: httpx.Request) -> httpx.Response:
        content = body if isinstance(body, str) else json.dumps(body)
        return httpx.Response(status, content=content.encode())

    with pytest.raises(error, match=words.replace("`", ".")):
        await collect(engine_for(handler))


async def test_broken_streams_are_unavailable():
    cases = {
        "closed the stream before the final response": sse(text_chunk("partial"), done=False),
        "malformed event": b"data: {not json\n\n",
        "failed on": sse(text_chunk("a"), {"error": {"message": "engine died", "code": 500}}),
    }
    for words, content in cases.items():
        with pytest.raises(Unavailable, match=words):
            await collect(engine_for(lambda _r, c=content: httpx.Response(200, content=c)))

    with pytest.raises(Unavailable, match="failed: ConnectError"):
        await collect(OpenAIEngine(), "http://127.0.0.1:1")


async def test_an_endless_line_is_refused(monkeypatch):
    monkeypatch.setattr(openai_engine, "MAX_EVENT_BYTES", 1024)
    body = Recorded([b"data: " + b"x" * 600, b"y" * 600])
    with pytest.raises(Unavailable, match="event over 1024 bytes"):
        await collect(engine_for(lambda _r: httpx.Response(200, stream=body)))
    assert body.closed


async def test_closing_the_stream_early_closes_the_upstream_response():
    body = Recorded(
        [sse(text_chunk("one"), done=False), sse(text_chunk("two"), done=False), b"data: [DONE]\n\n"]
    )
    engine = engine_for(lambda _r: httpx.Response(200, stream=body))
    agen = engine.stream("http://eng:8000", REQ, 10)
    first = await agen.__anext__()
    assert first.text == "one" and not body.closed
    await agen.aclose()
    assert body.closed
    await engine.close()


class HeldEnd(Recorded):
    """A body whose end (after [DONE]) comes only once `release` is set, as a server sends the
    chunked encoding's end after a turn of its own."""

    def __init__(self, pieces: list[bytes]) -> None:
        super().__init__(pieces)
        self.release = asyncio.Event()
        self.ended = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for p in self.pieces:
            yield p
        await self.release.wait()

    async def aclose(self) -> None:
        self.closed = True
        self.ended.set()


async def test_the_final_chunk_does_not_wait_for_the_bodys_end():
    body = HeldEnd(
        [sse(text_chunk("one"), {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}})]
    )
    engine = engine_for(lambda _r: httpx.Response(200, stream=body))
    chunks = await asyncio.wait_for(collect_open(engine), 10)
    assert [c.text for c in chunks] == ["one", ""] and chunks[-1].final and chunks[-1].output_tokens == 1
    assert not body.closed  # still being read to its end, off the answer's path
    body.release.set()
    await asyncio.wait_for(body.ended.wait(), 10)  # then closed: the connection goes back to the pool
    await engine.close()


async def test_closing_the_engine_stops_reading_whole_answers_ends():
    body = HeldEnd([sse(text_chunk("one"))])
    engine = engine_for(lambda _r: httpx.Response(200, stream=body))
    await asyncio.wait_for(collect_open(engine), 10)
    await asyncio.wait_for(engine.close(), 10)
    assert body.closed


async def collect_open(engine: OpenAIEngine) -> list[EngineChunk]:
    return [c async for c in engine.stream("http://eng:8000", REQ, 10)]


# --- the dispatcher picks the engine by the endpoint's kind -------------------------------------


class ScriptedEngine:
    def __init__(self, texts: list[str] | None = None, fail: Exception | None = None) -> None:
        self.texts, self.fail, self.calls = texts or [], fail, []

    async def stream(self, address: str, req: EngineRequest, timeout: float | None):
        self.calls.append(address)
        if self.fail is not None:
            raise self.fail
        for t in self.texts:
            yield EngineChunk(t, False)
        yield EngineChunk("", True, 1, len(self.texts))

    async def close(self) -> None:
        pass


class OneModelView:
    def __init__(self, candidates: list[Candidate]) -> None:
        self._candidates = candidates

    def candidates(self, model: str) -> list[Candidate]:
        return list(self._candidates)


class FakeCall:
    """The parts of a Call the dispatcher reads and fills in."""

    slo = None
    inp = type("Inp", (), {"timeout_s": 5.0})()
    endpoint = None
    journal = None
    failed_over_from = ""
    gpu_seconds = 0.0
    queue_s = 0.0

    def scheduling_request(self):
        from services.router.scheduling import SchedulingRequest

        return SchedulingRequest(model="m", prompt="p")

    def engine_request(self) -> EngineRequest:
        return REQ


async def test_dispatch_uses_the_kinds_engine_and_fails_over_across_kinds():
    triton = ScriptedEngine(fail=Unavailable("triton down"))
    openai = ScriptedEngine(texts=["from", " vllm"])
    view = OneModelView([
        Candidate("trt", "10.0.0.1:8001", "m", kind="triton"),
        Candidate("vllm", "http://10.0.0.2:8000", "m", kind="openai"),
    ])  # fmt: skip
    seen_first: set[str] = set()
    for seed in range(8):  # whichever the scheduler picks first, the answer comes from vLLM
        triton.calls.clear()
        call = FakeCall()
        d = Dispatcher(view, Scheduler(seed=seed), FlowController(), triton, openai=openai)
        chunks = [c async for c in d.stream(call)]
        assert "".join(c.text for c in chunks) == "from vllm" and call.endpoint.name == "vllm"
        seen_first.add("trt" if triton.calls else "vllm")
        assert call.failed_over_from == ("trt" if triton.calls else "")
    assert "trt" in seen_first  # some seed picked Triton first and failed over to the OpenAI endpoint


async def test_an_endpoint_of_a_kind_without_an_engine_is_unavailable():
    view = OneModelView([Candidate("vllm", "http://10.0.0.2:8000", "m", kind="openai")])
    d = Dispatcher(view, Scheduler(seed=1), FlowController(), ScriptedEngine(texts=["x"]))
    with pytest.raises(Unavailable, match=r"besides \['vllm'\]") as caught:
        async for _ in d.stream(FakeCall()):
            pass
    assert "first try failed: endpoint vllm speaks 'openai', which this router has no engine for" in str(
        caught.value
    )


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
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        headers = {"content-type": "text/event-stream", "set-cookie": "session=alice-secret; Path=/"}
        return httpx.Response(200, content=sse(text_chunk("ok", "stop")), headers=headers)

    engine = engine_for(handler)
    try:
        for _ in range(2):
            texts = [c.text async for c in engine.stream("http://eng:8000", REQ, 10)]
            assert texts[0] == "ok"
    finally:
        await engine.close()
    assert len(seen) == 2
    assert "cookie" not in seen[1].headers
