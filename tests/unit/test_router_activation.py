"""Requests for a model the pool scaled to zero: held while it wakes, then dispatched (the
dispatcher, the activator and the endpoint view, with a fake engine and a fake pool wake)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from harness.pool.v1 import pool_pb2
from prometheus_client import CollectorRegistry

from services.common.errors import Unavailable
from services.router.activation import ActivationMetrics, Activator
from services.router.dispatch import Dispatcher
from services.router.engine import EngineChunk, EngineRequest
from services.router.flow import FlowController
from services.router.scheduling import Scheduler
from services.router.views import EndpointView
from tests.helpers.router_fakes import DispatchCall

MODEL = "big-trt"


class Engine:
    async def stream(self, address: str, req: EngineRequest, timeout: float | None):
        yield EngineChunk(f"from {address}", False)
        yield EngineChunk("", True, 1, 1)

    async def close(self) -> None:
        pass


def Call(timeout_s: float | None = 60.0) -> DispatchCall:
    return DispatchCall(MODEL, timeout_s=timeout_s)


class Pool:
    """ActivateDeployment as the router sees it: records the asks, signals each one."""

    def __init__(self, fail: bool = False) -> None:
        self.asks: list[str] = []
        self.asked = asyncio.Event()
        self.fail = fail

    async def activate(self, model: str) -> None:
        self.asks.append(model)
        self.asked.set()
        if self.fail:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "pool down")


def ready_endpoint(name: str = "gpu-1") -> pool_pb2.Endpoint:
    return pool_pb2.Endpoint(
        name=name,
        address=f"{name}:1",
        health=pool_pb2.ENDPOINT_HEALTH_HEALTHY,
        models=[pool_pb2.EndpointModel(name=MODEL, state=pool_pb2.MODEL_STATE_READY)],
    )


@pytest.fixture
async def rig():
    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # never dialled: updates are applied directly
    view = EndpointView(channel)
    view.apply([], scaled_to_zero=[MODEL])  # the pool's watch: the model is at zero
    pool, registry, clock = Pool(), CollectorRegistry(), [0.0]
    activator = Activator(view, pool.activate, 120.0, ActivationMetrics(registry), clock=lambda: clock[0])
    dispatcher = Dispatcher(view, Scheduler(seed=1), FlowController(), Engine(), activator=activator)
    yield view, pool, activator, dispatcher, registry, clock
    await activator.close()
    await channel.close()


async def answer(dispatcher: Dispatcher, call: Call) -> str:
    return "".join([c.text async for c in dispatcher.stream(call)])


def held(registry: CollectorRegistry, outcome: str) -> float:
    return registry.get_sample_value("harness_router_activation_holds_total", {"outcome": outcome})


async def test_requests_are_held_until_the_woken_model_has_an_endpoint_and_the_pool_is_asked_once(rig):
    view, pool, activator, dispatcher, registry, _clock = rig
    calls = [asyncio.ensure_future(answer(dispatcher, Call())) for _ in range(20)]
    await pool.asked.wait()
    while activator.held < 20:  # each request parks on the view's change event
        await asyncio.sleep(0)
    assert pool.asks == [MODEL] and not any(c.done() for c in calls)
    assert registry.get_sample_value("harness_router_held_requests") == 20
    view.apply([], snapshot=False, scaled_to_zero=[MODEL])  # an update without the model: still held
    await asyncio.sleep(0)
    assert not any(c.done() for c in calls)
    view.apply([ready_endpoint()], snapshot=False, scaled_to_zero=[])
    assert await asyncio.gather(*calls) == ["from gpu-1:1"] * 20
    assert held(registry, "served") == 20 and activator.held == 0
    assert registry.get_sample_value("harness_router_activations_total", {"outcome": "ok"}) == 1


async def test_the_pool_is_asked_again_only_after_the_interval(rig):
    view, pool, activator, dispatcher, _registry, clock = rig
    first = asyncio.ensure_future(answer(dispatcher, Call()))
    await pool.asked.wait()
    pool.asked.clear()
    second = asyncio.ensure_future(answer(dispatcher, Call()))
    while activator.held < 2:
        await asyncio.sleep(0)
    assert pool.asks == [MODEL]
    clock[0] += activator.ask_every_s  # a long cold start: a later request asks again
    third = asyncio.ensure_future(answer(dispatcher, Call()))
    await pool.asked.wait()
    assert pool.asks == [MODEL, MODEL]
    view.apply([ready_endpoint()], snapshot=False, scaled_to_zero=[])
    assert len(await asyncio.gather(first, second, third)) == 3


async def test_a_hold_ends_unavailable_at_the_callers_deadline_or_the_routers_bound(rig):
    _view, _pool, activator, dispatcher, registry, _clock = rig
    with pytest.raises(Unavailable, match="being activated"):
        await answer(dispatcher, Call(timeout_s=0.01))  # the caller's deadline bounds the hold
    activator.wait_s = 0.01
    with pytest.raises(Unavailable, match="retry shortly"):
        await answer(dispatcher, Call(timeout_s=None))
    assert held(registry, "timed_out") == 2 and activator.held == 0
    assert registry.get_sample_value("harness_router_held_requests") == 0


async def test_no_hold_for_a_model_not_at_zero_nor_when_holding_is_off_or_full(rig):
    view, pool, activator, dispatcher, registry, _clock = rig
    view.apply([], scaled_to_zero=[])  # simply not deployed: refused at once, nothing asked
    with pytest.raises(Unavailable, match="no ready endpoint"):
        await answer(dispatcher, Call())
    view.apply([], scaled_to_zero=[MODEL])
    activator.wait_s = 0  # --activation-wait-s 0: refused at once, as before
    with pytest.raises(Unavailable, match="no ready endpoint"):
        await answer(dispatcher, Call())
    assert pool.asks == []
    activator.wait_s, activator.max_held = 120.0, 1
    first = asyncio.ensure_future(answer(dispatcher, Call()))
    await pool.asked.wait()
    with pytest.raises(Unavailable, match="already holds 1 requests"):
        await answer(dispatcher, Call())
    assert held(registry, "refused") == 1
    view.apply([ready_endpoint()], snapshot=False, scaled_to_zero=[])
    assert await first == "from gpu-1:1"


async def test_a_failed_ask_is_counted_and_the_request_still_waits_for_the_view(rig):
    view, _pool, activator, dispatcher, registry, _clock = rig
    pool = Pool(fail=True)
    activator._activate = pool.activate
    call = asyncio.ensure_future(answer(dispatcher, Call()))
    await pool.asked.wait()
    while registry.get_sample_value("harness_router_activations_total", {"outcome": "failed"}) != 1:
        await asyncio.sleep(0)
    assert not call.done()  # another router's ask may still wake it
    view.apply([ready_endpoint()], snapshot=False, scaled_to_zero=[])
    assert await call == "from gpu-1:1"


async def test_the_view_keeps_the_scaled_to_zero_list_across_updates_that_do_not_carry_it():
    channel = grpc.aio.insecure_channel("127.0.0.1:1")
    view = EndpointView(channel)
    view.apply([], scaled_to_zero=[MODEL, "other"])
    view.apply([ready_endpoint()])  # a ListEndpoints poll carries no list: the last one stands
    assert view.scaled_to_zero("other") and view.candidates(MODEL)
    view.apply([], scaled_to_zero=[])
    assert not view.scaled_to_zero("other")
    await channel.close()
