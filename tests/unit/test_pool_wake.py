"""Scale-to-zero and waking without servers: per-model idle TTLs, the scaled-to-zero list the
endpoint table publishes to routers, and ActivateDeployment's core (wake.py)."""

from __future__ import annotations

import asyncio

import pytest

from services.common.errors import NotFound
from services.pool.wake import Waker
from tests.helpers.pool_world import World


async def scaled_to_zero_world(clock: list[float]):
    """One 80 GiB endpoint; 'big' (idle TTL 30 s for agents) scaled to zero, 'small' kept."""
    w = World(("a", 80, ""))
    m = w.manager(wall_clock=lambda: clock[0], agent_idle_ttl_s=0, model_idle_ttl_s={"big-trt": 30})
    await m.on_agent_online(["big"], agent="summariser")
    await m.deploy("small", 1, "ops")
    w.probe_all()
    assert {v.model: v.idle_ttl_s for v in m.views()} == {"big": 30, "small": 0}
    await m.sweep_idle()
    clock[0] += 31
    assert await m.sweep_idle() == ["big"]  # 'small' (TTL 0: never) stays
    w.probe_all()
    return w, m


async def test_per_model_idle_ttl_and_the_published_scaled_to_zero_list():
    clock = [0.0]
    w, m = await scaled_to_zero_world(clock)
    assert "big-trt" not in w.loaded["a"] and "small-trt" in w.loaded["a"]
    assert w.table.scaled_to_zero() == ("big-trt",)
    assert w.table.changes_since(0).scaled_to_zero == ("big-trt",)
    assert m.agent_idle_ttl("big") == 30 and m.agent_idle_ttl("small") == 0


async def test_a_scaled_to_zero_change_alone_reaches_watchers():
    w = World(("a", 80, ""))
    stream = w.table.watch(w.table.revision)
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)  # the watcher is parked on the table's change event
    assert not pending.done()
    w.table.set_scaled_to_zero(frozenset({"big-trt"}))
    batch = await pending
    assert not batch.snapshot and batch.endpoints == () and batch.scaled_to_zero == ("big-trt",)
    await stream.aclose()


async def test_activate_wakes_once_and_routers_hold_until_a_replica_is_ready():
    clock = [0.0]
    w, m = await scaled_to_zero_world(clock)
    gate, loaded = asyncio.Event(), w.load

    async def slow_load(address: str, model: str) -> float:
        await gate.wait()
        return await loaded(address, model)

    w.load = slow_load
    done: list[tuple[str, str]] = []
    finished = asyncio.Event()

    async def on_done(model: str, error: str) -> None:
        done.append((model, error))
        finished.set()

    waker = Waker(m, on_done)
    waking, view = waker.activate("big")
    assert waking and view.scaled_to_zero
    assert waker.activate("big-trt")[0]  # by Triton name too; the same wake, not a second
    await asyncio.sleep(0)
    gate.set()
    await finished.wait()
    assert done == [("big", "")] and w.loads().count(("a", "big-trt")) == 2  # warm-up + one wake
    # Loaded, but no probe has shown it READY: routers must keep holding, not refuse.
    assert w.table.scaled_to_zero() == ("big-trt",) and not m.get("big").scaled_to_zero
    w.probe_all()
    assert w.table.scaled_to_zero() == ()
    await m.reconcile()
    assert not m.get("big").waking
    waking, view = waker.activate("big")
    assert not waking and view.ready_replicas == 1


async def test_activate_refuses_unknown_and_undeployed_models():
    clock = [0.0]
    _w, m = await scaled_to_zero_world(clock)
    waker = Waker(m)
    with pytest.raises(NotFound):
        waker.activate("no-such-model")
    await m.undeploy("small", "ops")
    with pytest.raises(NotFound, match="not deployed"):
        waker.activate("small")
    assert waker.activate("big")[0]  # still at zero: a wake starts
    await waker.close()


async def test_a_failed_wake_stays_at_zero_and_the_next_activation_tries_again():
    clock = [0.0]
    w, m = await scaled_to_zero_world(clock)
    w.refuse = {"a"}
    results: asyncio.Queue[str] = asyncio.Queue()

    async def on_done(_model: str, error: str) -> None:
        await results.put(error)

    waker = Waker(m, on_done)
    assert waker.activate("big")[0]
    assert "not enough GPU memory" in await results.get()
    assert m.get("big").scaled_to_zero and w.table.scaled_to_zero() == ("big-trt",)
    w.refuse = set()
    assert waker.activate("big")[0]
    assert await results.get() == ""
    w.probe_all()
    assert "big-trt" in w.loaded["a"] and w.table.scaled_to_zero() == ()
