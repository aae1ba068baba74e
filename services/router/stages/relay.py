"""The last stages of the ext_proc path: where the answer comes from when Envoy carries it.

`EnvoyRelay` is the pipeline's source on this path: it picks the endpoint as Dispatch does
(scheduler, flow control), hands it to the ext_proc front door (which tells Envoy where to
connect), then yields the chunks the front door reads off the response Envoy relays (every
chunk when Envoy streams the response body to the router, else only the end of the stream).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from services.common.errors import FailedPrecondition, Unavailable
from services.router.call import Call, Chunk
from services.router.dispatch import Dispatcher
from services.router.engine import TRITON, EngineChunk
from services.router.pipeline import Stage
from services.router.scheduling import Candidate
from services.router.views import EndpointView


@dataclass
class RelayLink:
    """What the ext_proc front door and the relay source tell each other about one call."""

    picked: asyncio.Future[Candidate] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    chunks: asyncio.Queue[EngineChunk | BaseException] = field(default_factory=asyncio.Queue)
    # Envoy streams the response body through the front door, which can then redact it.
    sees_output: bool = False

    def feed(self, chunk: EngineChunk) -> None:
        self.chunks.put_nowait(chunk)

    def fail(self, error: BaseException) -> None:
        self.chunks.put_nowait(error)


class NoOutputPolicy(Stage):
    """Where Envoy streams the answer straight to the caller (its response body is not sent to
    the router), nothing can redact it: an agent whose policy redacts output is refused."""

    name = "no-output-policy"

    async def enter(self, call: Call) -> None:
        if call.output is not None and call.output.active and not (call.relay and call.relay.sees_output):
            raise FailedPrecondition(
                f"agent {call.agent_name!r} has an output redaction policy, which this Envoy "
                "listener cannot apply (it does not stream the response body to the router): "
                "use a listener with response_body_mode STREAMED, or the router's front door"
            )


class EnvoyRelay(Stage):
    """The source of the ext_proc path (see the module docstring)."""

    name = "envoy-relay"

    def __init__(self, dispatcher: Dispatcher, endpoints: EndpointView) -> None:
        self.dispatcher = dispatcher
        self.endpoints = endpoints

    def _other_kinds(self, model: str) -> frozenset[str]:
        # Envoy forwards the caller's Triton request as it is: only Triton endpoints can take it.
        return frozenset(c.name for c in self.endpoints.candidates(model) if (c.kind or TRITON) != TRITON)

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        link: RelayLink = call.relay
        request = call.scheduling_request()
        target = await self.dispatcher.choose(request, call, self._other_kinds(request.model))
        scheduler = self.dispatcher.scheduler
        call.endpoint, call.dispatched = target, True
        scheduler.acquire(target)
        sharing = max(1, scheduler.memory.load(target))
        started, sent = time.perf_counter(), False
        try:
            link.picked.set_result(target)
            while True:
                item = await link.chunks.get()
                if isinstance(item, BaseException):
                    raise item
                if item.text and not sent:
                    sent = True
                    scheduler.observe_ttft(target, time.perf_counter() - started)
                yield call.take(item)
                if item.final:
                    break
            scheduler.record(target, request)
        finally:
            call.gpu_seconds += (time.perf_counter() - started) / sharing
            call.gpu_type = self.endpoints.gpu_type(target.name)
            scheduler.release(target)
            self.dispatcher.flow.capacity_changed(1)
        call.ended_normally()


def unavailable(why: str) -> Unavailable:
    return Unavailable(f"the relayed stream failed: {why}")
