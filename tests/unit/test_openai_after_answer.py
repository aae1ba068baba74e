"""The OpenAI front door's answer ends before the work the caller need not wait for: settling the
rate-limit hold (a stage's release hook) waits until the response's last byte was sent, and still
happens then; so do a dispatched call's records, whose durable journal entry stands for the call
until then. A call without one (here: a source that never dispatches) is recorded before its
answer ends. Driven as uvicorn drives the ASGI app, over the real Router and stages."""

from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client import CollectorRegistry

from services.common.identity import AuthConfig, Authenticator, Identity
from services.router.call import AfterAnswer, Call, Chunk, GenerationInput
from services.router.core import Router, RouterPolicy
from services.router.flow import MemoryRateLimiter
from services.router.metrics import RouterMetrics
from services.router.openai_http.app import OpenAIFrontDoor
from services.router.pipeline import Director, Stage
from services.router.result_cache import MemoryResultCache
from services.router.scheduling import Candidate
from services.router.triton import TritonChunk
from tests.helpers.router_fakes import MODEL, Events, FakeRegistry, agent

XFCC = "By=spiffe://harness.local/service/router;URI=spiffe://harness.local/agent/a1"


class Endpoints:
    def gpu_type(self, name: str) -> str:
        return "H100"


class TwoWords:
    async def stream(self, call: Call):
        call.endpoint = Candidate(name="sim-0", address="127.0.0.1:1", model="m")
        yield TritonChunk("Hello", False, 3, 1)
        yield TritonChunk(" world", False, 3, 2)
        yield TritonChunk("", True, 3, 2)


class Dispatched(TwoWords):
    """Writes the call's journal entry before its first token, as the dispatcher does."""

    async def stream(self, call: Call):
        call.endpoint = Candidate(name="sim-0", address="127.0.0.1:1", model="m")
        call.journal.placed()
        async for chunk in super().stream(call):
            yield chunk


class AtLastByte(list):
    """The messages sent; notes, when the last one goes, what was recorded by then."""

    def __init__(self, events: Events) -> None:
        super().__init__()
        self.events, self.then = events, None

    def append(self, message: dict) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self.then = (len(self.events.audit), self.events.outbox.calls_under_way())
        super().append(message)


class Witness(MemoryRateLimiter):
    """Notes, when the hold is settled, what the client had been sent by then."""

    def __init__(self, sent: list[dict], events: Events) -> None:
        super().__init__()
        self.sent, self.events = sent, events
        self.seen: list[tuple[bool, int]] = []

    async def settle(self, reservation, actual_tokens, *, refund_request=False):
        ended = any(m["type"] == "http.response.body" and not m.get("more_body") for m in self.sent)
        self.seen.append((ended, len(self.events.audit)))
        await super().settle(reservation, actual_tokens, refund_request=refund_request)


async def resolve_key(secret: str) -> Identity:
    return Identity(user="alice", auth_method="api_key", project="p")


async def post(app, body: dict, sent: list[dict]) -> None:
    raw = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
        (b"x-forwarded-client-cert", XFCC.encode()), (b"authorization", b"Bearer hk_test"),
    ]  # fmt: skip
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "root_path": "", "query_string": b"", "headers": headers, "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 50000), "state": {},
    }  # fmt: skip
    pending, done = [raw], asyncio.Event()

    async def receive():
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    await asyncio.wait_for(app(scope, receive, send), 10)


@pytest.mark.parametrize("stream", [True, False])
async def test_holds_settle_after_the_last_byte_and_the_records_come_before_it(stream):
    sent: list[dict] = []
    events = Events()
    limiter = Witness(sent, events)
    router = Router(
        FakeRegistry(agent()), Endpoints(), TwoWords(), events, limiter, MemoryResultCache(),
        RouterMetrics(CollectorRegistry()), RouterPolicy(cache_ttl_s=0.0),
    )  # fmt: skip
    auth = Authenticator(AuthConfig(trust_xfcc_without_tls=True), api_key_resolver=resolve_key)
    app = OpenAIFrontDoor(router, auth).app()
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": stream,
    }
    await post(app, body, sent)
    assert sent[0]["status"] == 200
    text = b"".join(m.get("body", b"") for m in sent[1:])
    assert (b"[DONE]" in text) if stream else (b"Hello world" in text)
    # Settled once, after the response's last byte; the model call's audit record came before it.
    assert limiter.seen == [(True, 1)]


async def test_release_hooks_run_after_every_completion_or_when_the_caller_says():
    log: list[str] = []

    class Hooks(Stage):
        def __init__(self, name: str) -> None:
            self.name = name

        async def complete(self, call, error) -> None:
            log.append(f"complete {self.name}")

        async def release(self, call, error) -> None:
            log.append(f"release {self.name}")

    class Source(Stage):
        name = "source"

        async def stream(self, call):
            yield Chunk("x", True)

    stages = [Hooks("a"), Hooks("b"), Source()]
    director = Director(stages, stages[-1], RouterMetrics(CollectorRegistry()).stage_errors)
    [_ async for _ in director.run(Call(GenerationInput(prompt="p")))]
    assert log == ["complete b", "complete a", "release b", "release a"]
    log.clear()
    later = AfterAnswer()
    [_ async for _ in director.run(Call(GenerationInput(prompt="p"), after_answer=later))]
    assert log == ["complete b", "complete a"]
    await later.run()
    assert log == ["complete b", "complete a", "release b", "release a"]
    # A stream closed only after the front door ran its work (e.g. collected late): the
    # releases still run, at the end, rather than into a list nobody reads any more.
    log.clear()
    [_ async for _ in director.run(Call(GenerationInput(prompt="p"), after_answer=later))]
    assert log == ["complete b", "complete a", "release b", "release a"]


@pytest.mark.parametrize("stream", [True, False])
async def test_a_dispatched_call_is_recorded_after_its_last_byte_its_journal_entry_standing_until_then(
    stream,
):
    events = Events()
    sent = AtLastByte(events)
    router = Router(
        FakeRegistry(agent()), Endpoints(), Dispatched(), events, MemoryRateLimiter(), MemoryResultCache(),
        RouterMetrics(CollectorRegistry()), RouterPolicy(cache_ttl_s=0.0),
    )  # fmt: skip
    auth = Authenticator(AuthConfig(trust_xfcc_without_tls=True), api_key_resolver=resolve_key)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": stream,
    }
    await post(OpenAIFrontDoor(router, auth).app(), body, sent)
    assert sent[0]["status"] == 200
    assert sent.then == (0, 1)  # at the last byte: no record yet, the journal entry in its place
    assert len(events.audit) == 1 and len(events.usage) == 1  # then the records, once
    assert events.outbox.calls_under_way() == 0
