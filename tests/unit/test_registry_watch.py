"""The registry's watch core (no gRPC) on SQLite and PostgreSQL: snapshots, deltas, resume,
live wake-ups, other writers, compaction, and no gaps under concurrent writers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest
from sqlalchemy import select

from services.common.errors import InvalidArgument
from services.registry import domain as d
from services.registry.models import ChangeRow
from services.registry.policy import Policy
from services.registry.store import Store
from services.registry.watch import WatchHub

TD = "harness.local"


@pytest.fixture
def store(db_url):
    s = Store(db_url)
    s.create_team(d.Team("finance"))
    s.create_project(d.Project("ledger", "finance"))
    s.register_model(d.Model("llama-3-8b"))
    s.create_agent(d.Agent("demo-agent", "ledger", type="rag"), TD)
    s.create_agent_version("demo-agent", d.AgentVersion("v1", ("llama-3-8b",)))
    yield s
    s.close()


class Stream:
    """Reads a hub's stream in the background so a test can act and then look."""

    def __init__(self, hub: WatchHub, since: int) -> None:
        self.queue: asyncio.Queue[d.WatchBatch] = asyncio.Queue()
        self._gen = hub.watch(since)
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        async for batch in self._gen:
            self.queue.put_nowait(batch)

    async def next(self, timeout: float = 5.0) -> d.WatchBatch:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def until(self, revision: int, timeout: float = 5.0) -> list[d.Change]:
        """Changes from deltas until the stream reaches `revision`."""
        out: list[d.Change] = []
        held = 0
        while held < revision:
            batch = await self.next(timeout)
            assert not batch.snapshot
            out += batch.changes
            held = batch.revision
        return out

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def test_snapshot_then_live_deltas_wake_at_once(store):
    hub = WatchHub(store, poll_s=60)  # polling too slow to matter: only the commit listener can wake
    stream = Stream(hub, 0)
    try:
        snap = await stream.next()
        assert snap.snapshot and not snap.more and snap.revision == store.last_revision()
        kinds = [(c.kind, c.key) for c in snap.changes]
        assert kinds == [
            ("team", "finance"),
            ("project", "ledger"),
            ("model", "llama-3-8b"),
            ("agent", "demo-agent"),
        ]
        assert snap.changes[-1].entity.versions[0].version == "v1"

        start = time.perf_counter()
        await asyncio.to_thread(store.set_agent_state, "demo-agent", "online")
        batch = await stream.next()
        latency = time.perf_counter() - start
        # Woken by the commit, not the 60 s poll (a generous bound: the machine may be busy).
        assert latency < 10, f"live delta took {latency * 1000:.0f} ms"
        (change,) = batch.changes
        assert (change.kind, change.key, change.entity.state) == ("agent", "demo-agent", "online")
        assert batch.revision == change.revision == store.last_revision() and not batch.snapshot
        assert hub.watchers == 1
    finally:
        await stream.close()
        hub.close()
    assert hub.watchers == 0


async def test_resume_gets_exactly_the_missed_deltas(store):
    hub = WatchHub(store, poll_s=60)
    held = store.last_revision()
    policy = Policy(store)
    rule = d.PolicyRule("p", ("role:analyst", "ledger", "agent:*", "invoke", "allow"))
    await asyncio.to_thread(policy.add, rule)
    await asyncio.to_thread(store.set_agent_state, "demo-agent", "online")
    await asyncio.to_thread(policy.remove, rule)
    stream = Stream(hub, held)
    try:
        batch = await stream.next()
        assert not batch.snapshot and not batch.more and batch.revision == store.last_revision()
        got = [(c.revision - held, c.kind, c.key, c.deleted) for c in batch.changes]
        assert got == [
            (1, "policy", rule.csv(), False),
            (2, "agent", "demo-agent", False),
            (3, "policy", rule.csv(), True),
        ]
        # A rule's delta carries the rule itself even though it is gone by now; a delete, nothing.
        assert batch.changes[0].entity == rule and batch.changes[2].entity is None
    finally:
        await stream.close()

    current = Stream(hub, store.last_revision())  # nothing missed: one empty "you are current"
    try:
        batch = await current.next()
        assert (batch.snapshot, batch.changes, batch.revision) == (False, (), store.last_revision())
    finally:
        await current.close()
        hub.close()


async def test_other_writers_are_seen_by_polling(store, db_url):
    hub = WatchHub(store, poll_s=0.05)
    other = Store(db_url)  # another registry process on the same database
    stream = Stream(hub, store.last_revision())
    try:
        await stream.next()
        await asyncio.to_thread(other.create_team, d.Team("ops"))
        (change,) = (await stream.next(timeout=2)).changes
        assert (change.kind, change.key, change.entity.name) == ("team", "ops", "ops")
    finally:
        await stream.close()
        hub.close()
        other.close()


@pytest.mark.parametrize("why", ["zero", "ahead", "compacted", "backlog"])
async def test_snapshot_when_deltas_cannot_be_replayed(store, why):
    hub = WatchHub(store, poll_s=60, max_backlog=3)
    head = store.last_revision()
    since = {"zero": 0, "ahead": head + 100, "compacted": 1, "backlog": 1}[why]
    if why == "compacted":
        assert store.compact_changes(keep=2) == head - 2
        assert store.change_window() == (head - 1, head)
    stream = Stream(hub, since)
    try:
        batch = await stream.next()
        assert batch.snapshot and batch.revision == head and len(batch.changes) == 4
    finally:
        await stream.close()
        hub.close()
    if why == "compacted":  # within the window, deltas still work
        stream = Stream(WatchHub(store), head - 1)
        try:
            assert [c.revision for c in (await stream.next()).changes] == [head]
        finally:
            await stream.close()


async def test_large_snapshots_and_backlogs_come_in_parts(store):
    for i in range(5):
        store.create_team(d.Team(f"t{i}"))
    hub = WatchHub(store, poll_s=60, batch_size=3, snapshot_part=3)
    stream = Stream(hub, 0)
    try:
        parts = [await stream.next() for _ in range(3)]  # 9 entities, 3 per message
        assert [(p.snapshot, p.more, len(p.changes)) for p in parts] == [(True, True, 3)] * 2 + [
            (True, False, 3)
        ]
        assert len({c.key for p in parts for c in p.changes}) == 9
    finally:
        await stream.close()
    since = store.last_revision() - 5
    stream = Stream(hub, since)
    try:
        first, second = await stream.next(), await stream.next()
        assert (first.more, len(first.changes), second.more, len(second.changes)) == (True, 3, False, 2)
        assert second.revision == store.last_revision()
    finally:
        await stream.close()
        hub.close()


async def test_negative_since_is_refused(store):
    with pytest.raises(InvalidArgument, match="since_revision"):
        async for _ in WatchHub(store).watch(-1):
            pass


async def test_no_gaps_under_concurrent_writers(store, db_url):
    """Writers in several threads and a second store; the watcher must see every revision the log
    ends up with, each once, in order, with no delta applied out of order."""
    hub = WatchHub(store, poll_s=0.02)
    other = Store(db_url)
    stream = Stream(hub, store.last_revision())
    start = store.last_revision()
    errors: list[BaseException] = []

    def write(s: Store, prefix: str) -> None:
        try:
            for i in range(15):
                s.create_team(d.Team(f"{prefix}{i}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    try:
        await stream.next()
        threads = [
            threading.Thread(target=write, args=(s, p)) for s, p in ((store, "a"), (store, "b"), (other, "c"))
        ]
        for t in threads:
            t.start()
        await asyncio.to_thread(lambda: [t.join() for t in threads])
        assert not errors
        end = store.last_revision()
        seen = [c.revision for c in await stream.until(end)]
        with store._sessions() as s:
            logged = list(
                s.scalars(
                    select(ChangeRow.revision).where(ChangeRow.revision > start).order_by(ChangeRow.revision)
                )
            )
        assert seen == logged and len(seen) == 45
    finally:
        await stream.close()
        hub.close()
        other.close()


async def test_quiet_streams_get_heartbeats(store):
    hub = WatchHub(store, poll_s=60, heartbeat_s=0.05)
    held = store.last_revision()
    stream = Stream(hub, held)
    try:
        for _ in range(3):  # the "current" message, then keep-alives
            batch = await stream.next(timeout=2)
            assert (batch.snapshot, batch.changes, batch.revision) == (False, (), held)
        await asyncio.to_thread(store.create_team, d.Team("ops"))
        while not (batch := await stream.next()).changes:
            pass
        assert batch.changes[0].key == "ops" and batch.revision == held + 1
    finally:
        await stream.close()
        hub.close()


async def test_an_empty_registry_snapshots_at_zero_then_streams_deltas(db_url):
    empty = Store(db_url)
    hub = WatchHub(empty, poll_s=60)
    stream = Stream(hub, 0)
    try:
        snap = await stream.next()
        assert (snap.snapshot, snap.changes, snap.revision) == (True, (), 0)
        await asyncio.to_thread(empty.create_team, d.Team("first"))
        batch = await stream.next()
        assert not batch.snapshot and [c.key for c in batch.changes] == ["first"]
    finally:
        await stream.close()
        hub.close()
        empty.close()
