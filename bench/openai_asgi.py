"""The OpenAI front door's own CPU per request, in process: (c) the router core called directly
(request context, identity, `Router.run` drained, as the gRPC servicer does) against (a) the
front door's ASGI app called with a raw ASGI scope, as uvicorn calls it (headers, XFCC identity,
body parsing and validation, SSE rendering, Starlette routing and response), for the same
streamed chat completion (max_tokens tokens). Both run the real Router and its stages over
in-memory stand-ins (registry, endpoints, an engine that answers at once, no event shipping),
so the difference is the front door's cost. No sockets, no uvicorn: its HTTP parsing is not
counted here (bench/openai_frontdoor.py measures the whole path through Envoy).

By default the agent has no data policy, no budget applies, the result cache is off and the
records go nowhere: the skeleton of the path. `--with` adds what the demo stack's agent has, one
part or all: `pii` (demo-agent's PII policy on the prompt and the streamed output), `budget` (a
monthly project budget and prices: a reservation and a settlement per call), `cache` (the result
cache on: a key and a lookup per call, every prompt distinct), `records` (the durable journal
entry and the audit and usage events in an on-disk outbox, as a router writes them; nothing is
shipped). Comparing runs gives each part's CPU per call.

Prints CPU microseconds per request for each path, the front door's extra, and the ratio
(a)/(c); with --profile, the top of a cProfile of (a).

Usage: python bench/openai_asgi.py [--requests 2000] [--tokens 8] [--rounds 3] [--no-stream]
       [--with pii,budget,cache,records | all] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import json
import pstats
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
from _inproc_router import FakeRegistry, NullEvents, agent_record
from harness.cost.v1 import cost_pb2
from harness.registry.v1 import registry_pb2
from prometheus_client import CollectorRegistry

from services.common import context as reqctx
from services.common.identity import AuthConfig, Authenticator, Identity
from services.router.budgets import MemoryBudgets
from services.router.budgets.prices import PriceTable
from services.router.budgets.rules import BudgetRule
from services.router.call import Call, GenerationInput
from services.router.chat import ChatMessage
from services.router.core import Router, RouterPolicy
from services.router.events import EventShipper
from services.router.flow import MemoryRateLimiter
from services.router.metrics import RouterMetrics
from services.router.openai_http.app import OpenAIFrontDoor
from services.router.outbox import Outbox
from services.router.result_cache import MemoryResultCache
from services.router.scheduling import Candidate
from services.router.triton import TritonChunk

MODEL, TRITON_MODEL, AGENT = "llama-3-8b", "llama-3-8b-instruct", "bench-agent"
XFCC = f"By=spiffe://harness.local/service/router;URI=spiffe://harness.local/agent/{AGENT}"
API_KEY = "hk_bench"  # the user: resolved in memory (the router resolves keys from its registry copy)
PARTS = ("pii", "budget", "cache", "records")
# compose/demo.yaml's demo-agent: what its prompts and answers are redacted of
DEMO_PII = (
    ("phone", registry_pb2.MASK_MODE_MASK),
    ("cn_resident_id", registry_pb2.MASK_MODE_HASH),
    ("bank_card", registry_pb2.MASK_MODE_MASK),
)


class ReadyEndpoints:
    ready = True

    def gpu_type(self, name: str) -> str:
        return "H100"

    def candidates(self, model: str) -> list[Candidate]:
        return []


@dataclass
class InstantEngine:
    """A dispatcher whose engine answers `tokens` one-word chunks at once."""

    tokens: int

    async def stream(self, call: Call):
        call.endpoint = Candidate(name="sim-0", address="127.0.0.1:1", model=TRITON_MODEL)
        for i in range(self.tokens):
            yield TritonChunk(f" word{i}", False, 12, i + 1)
        yield TritonChunk("", True, 12, self.tokens)


async def resolve_key(secret: str) -> Identity:
    return Identity(user="alice", auth_method="api_key", project="bench")


def build(
    tokens: int, parts: frozenset[str] = frozenset(), state: str = ""
) -> tuple[Router, OpenAIFrontDoor]:
    """The router and its front door; `parts` (of PARTS) as the demo stack has them, the outbox
    under `state`."""
    agent = agent_record(AGENT, MODEL)
    if "pii" in parts:
        agent.data_policy.pii.extend(registry_pb2.PiiRule(kind=k, mode=m) for k, m in DEMO_PII)
    registry = FakeRegistry({AGENT: agent}, MODEL, TRITON_MODEL)
    budgets = None
    if "budget" in parts:  # compose/demo.yaml's project budget and llama-3-8b's prices
        budgets = MemoryBudgets()
        rule = BudgetRule(
            "bench-monthly",
            cost_pb2.BUDGET_SCOPE_PROJECT,
            "bench",
            cost_pb2.BUDGET_PERIOD_MONTHLY,
            500_000_000,
        )
        budgets.update([rule], PriceTable({MODEL: (200_000, 600_000)}, {"H100": 2_500_000}))
    events = NullEvents()
    if "records" in parts:  # channels never used: nothing is shipped, the outbox only grows
        unused = grpc.aio.insecure_channel("127.0.0.1:1")
        events = EventShipper(unused, unused, CollectorRegistry(), Outbox(f"{state}/outbox.db"))
    policy = RouterPolicy(cache_ttl_s=300.0 if "cache" in parts else 0.0, redaction_key="bench-key")
    router = Router(
        registry, ReadyEndpoints(), InstantEngine(tokens), events, MemoryRateLimiter(),
        MemoryResultCache(), RouterMetrics(CollectorRegistry()), policy, budgets,
    )  # fmt: skip
    # As behind Envoy, without TLS: the agent from XFCC, the user from an API key.
    auth = Authenticator(AuthConfig(trust_xfcc_without_tls=True), api_key_resolver=resolve_key)
    return router, OpenAIFrontDoor(router, auth)


async def core_direct(router: Router, auth: Authenticator, prompt: str, tokens: int) -> None:
    """What the gRPC front door does around the core: context, identity, the stream drained."""
    headers = {"x-forwarded-client-cert": XFCC, "authorization": f"Bearer {API_KEY}"}
    ctx = reqctx.context_from_metadata(headers.items())
    reqctx.set_current(dataclasses.replace(ctx, identity=await auth.authenticate_peer((), False, headers)))
    inp = GenerationInput(
        messages=(ChatMessage("user", prompt),), max_tokens=tokens, temperature=0.0, model=MODEL
    )
    async for _ in router.run(Call(inp)):
        pass


async def asgi_call(app, prompt: str, tokens: int, stream: bool) -> bytes:
    """One POST /v1/chat/completions through the ASGI app, as uvicorn (httptools) calls it."""
    body = json.dumps({
        "model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
        "temperature": 0, "stream": stream,
    }).encode()  # fmt: skip
    headers = [
        (b"host", b"router:8080"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"accept", b"text/event-stream" if stream else b"application/json"),
        (b"x-forwarded-client-cert", XFCC.encode()),
        (b"authorization", f"Bearer {API_KEY}".encode()),
        (b"x-request-id", b"bench-" + prompt.encode()[-12:]),
    ]
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 50000), "scheme": "http",
        "method": "POST", "root_path": "", "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions", "query_string": b"", "headers": headers, "state": {},
    }  # fmt: skip
    sent, done = [body], asyncio.Event()
    out: list[bytes] = []

    async def receive():
        if sent:
            return {"type": "http.request", "body": sent.pop(), "more_body": False}
        await done.wait()  # uvicorn answers disconnect only once the response is over
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message
        else:
            out.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    await app(scope, receive, send)
    return b"".join(out)


async def measure(label: str, one, requests: int) -> float:
    """CPU microseconds per request of `requests` sequential calls."""
    for i in range(min(200, requests)):  # warm-up
        await one(f"warm {label} {i}")
    start = time.process_time()
    for i in range(requests):
        await one(f"{label} prompt {i}")
    return (time.process_time() - start) / requests * 1e6


async def main(args: argparse.Namespace) -> None:
    parts = frozenset(PARTS if args.with_ == "all" else filter(None, args.with_.split(",")))
    if parts - set(PARTS):
        raise SystemExit(
            f"--with: unknown {sorted(parts - set(PARTS))}; choose from {', '.join(PARTS)} or all"
        )
    with tempfile.TemporaryDirectory(prefix="openai-asgi-") as state:
        await measured(args, parts, state)


async def measured(args: argparse.Namespace, parts: frozenset[str], state: str) -> None:
    router, front = build(args.tokens, parts, state)
    app, stream = front.app(), not args.no_stream
    sample = (await asgi_call(app, "sample", args.tokens, stream)).decode()
    assert sample.endswith("[DONE]\n\n") if stream else '"finish_reason"' in sample, sample

    async def direct(prompt: str) -> None:
        await core_direct(router, front.auth, prompt, args.tokens)

    async def via_asgi(prompt: str) -> None:
        await asgi_call(app, prompt, args.tokens, stream)

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        await measure("profile", via_asgi, args.requests)
        prof.disable()
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(35)
        stats.sort_stats("cumulative").print_stats(50)
        return
    kind = "streamed" if stream else "whole"
    print(f"chat completion, {kind}, {args.tokens} tokens, {args.requests} sequential requests per round, "
          f"with: {', '.join(sorted(parts)) or 'nothing (the skeleton)'}")  # fmt: skip
    print(f"{'round':>5} {'(c) core us/req':>16} {'(a) ASGI us/req':>16} {'extra us':>9} {'(a)/(c)':>8}")
    ratios = []
    for r in range(args.rounds):  # interleaved, so a busy moment on the machine hits both
        core = await measure(f"c{r}", direct, args.requests)
        asgi = await measure(f"a{r}", via_asgi, args.requests)
        ratios.append(asgi / core)
        print(f"{r + 1:>5} {core:>16.0f} {asgi:>16.0f} {asgi - core:>9.0f} {asgi / core:>8.2f}")
    print(f"median (a)/(c): {sorted(ratios)[len(ratios) // 2]:.2f}")
    if "records" in parts:  # what the path wrote, so a run shows the records were really made
        box = router.events.outbox
        print(f"outbox: {box.pending('audit')} audit and {box.pending('usage')} usage events, "
              f"{box.calls_under_way()} journal entries open")  # fmt: skip
    if router.budgets is not None:  # a bench may read the in-memory counters directly
        spent = sum(c.spent or 0 for c in router.budgets._c.values())
        print(f"budget: {spent} micro-USD settled in {len(router.budgets._c)} counter(s)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-stream", action="store_true", help="whole (non-streamed) answers")
    p.add_argument(
        "--with", dest="with_", default="",
        help=f"comma-separated parts the demo stack's agent has ({', '.join(PARTS)}), or all",
    )  # fmt: skip
    p.add_argument("--profile", action="store_true", help="cProfile the ASGI path instead")
    asyncio.run(main(p.parse_args()))
