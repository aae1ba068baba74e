"""Watch: the registry's revisioned change stream, with no gRPC in it.

A client sends the last revision it holds and gets, first:
- a snapshot (every entity; `snapshot` set on each part, `more` on all but the last) when it
  holds nothing (0), when its revision is unknown here (ahead of the log: another database),
  when the log was compacted past it, or when replaying would take over `max_backlog` changes;
- otherwise the deltas after its revision, or one empty message saying it is current;
then live deltas as they commit, and an empty message after `heartbeat_s` of quiet. Every message names the revision to resume from, so a client
that reconnects with the last revision it applied misses nothing and gets nothing twice.

Live deltas: writes through this process's store wake watchers at once (a commit listener);
writes by other processes on the same database are found by polling the newest revision every
`poll_s` while anyone watches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence

from services.common.errors import InvalidArgument
from services.registry import domain as d
from services.registry.convert import change_size
from services.registry.store import Store

log = logging.getLogger("harness.registry.watch")
MAX_REVISION = 2**31 - 1


class WatchHub:
    """Feeds every Watch stream of one registry process from one store."""

    def __init__(
        self,
        store: Store,
        *,
        poll_s: float = 0.5,
        batch_size: int = 500,
        snapshot_part: int = 2000,
        max_backlog: int = 10_000,
        heartbeat_s: float = 60.0,
        part_bytes: int = 1024 * 1024,
        measure: Callable[[d.Change], int] = change_size,
    ) -> None:
        self._store = store
        self._poll_s = poll_s
        self._batch = batch_size  # deltas per message
        # Entities per snapshot message: large, since a client must collect every part before it
        # can swap its copy, yet bounded so one message stays far below gRPC's 4 MiB default.
        self._part = snapshot_part
        # ...and bounded in bytes: a few huge entities must not make one message that clients
        # refuse (RESOURCE_EXHAUSTED), which would stop every watcher for good. A single change
        # larger than this goes alone (the registry's field limits keep it well under 4 MiB).
        self._part_bytes = part_bytes
        self._measure = measure
        self._max_backlog = max_backlog
        # An idle stream still gets an empty message now and then: proxies (Envoy's stream idle
        # timeout) keep it open, and the client learns the registry is still there.
        self._heartbeat_s = heartbeat_s
        self._head = 0  # newest revision known to be committed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._watchers = 0
        self._poller: asyncio.Task | None = None
        self._unlisten = store.add_commit_listener(self._committed)
        self._closing = False

    def shutdown(self) -> None:
        """End every open stream now (the server is stopping); clients resume elsewhere/later."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()

    def close(self) -> None:
        self._unlisten()
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None

    @property
    def watchers(self) -> int:
        return self._watchers

    async def watch(self, since: int) -> AsyncIterator[d.WatchBatch]:
        """The stream for a client holding `since`; runs until the caller stops iterating."""
        if since < 0:
            raise InvalidArgument(f"since_revision is {since}; send 0 (snapshot) or a revision you hold")
        self._enter()
        try:
            held, first = since, True
            while not self._closing:
                if not first and not await self._wait_past(held, self._heartbeat_s):
                    yield d.WatchBatch(False, (), held)
                    continue
                if self._closing:
                    break
                batches, head = await asyncio.to_thread(self._read, held, first)
                self._advance(head)  # so a `more` batch is followed at once, not at the next poll
                for batch in batches:
                    yield batch
                    held = batch.revision
                if not batches and not first:
                    # The head moved but nothing is readable yet: retry at the poll pace, not in a spin.
                    await asyncio.sleep(self._poll_s)
                first = False
        finally:
            self._leave()

    # --- reading (worker thread) ---------------------------------------------------------

    def _read(self, held: int, first: bool) -> tuple[list[d.WatchBatch], int]:
        """(what a client holding `held` gets next, newest revision): a snapshot, deltas, or
        (first read only) an empty message saying it is current."""
        # Changes before the window: a compaction after this read shows up as a raised floor,
        # which errs toward a snapshot, never toward a gap.
        # Beyond any revision the log can hold (32-bit in PostgreSQL): unknown here, so a snapshot.
        new = first and (held == 0 or held > MAX_REVISION)
        changes = [] if new else self._store.changes_since(held, self._batch + 1)
        floor, head = self._store.change_window()
        if new or held > head or floor > held + 1 or head - held > self._max_backlog:
            return self._snapshot(), head
        if not changes:
            return ([d.WatchBatch(False, (), held)] if first else []), head
        more = len(changes) > self._batch
        parts = self._parts(changes[: self._batch], self._batch)
        return [
            d.WatchBatch(False, part, part[-1].revision, more or i < len(parts) - 1)
            for i, part in enumerate(parts)
        ], head

    def _snapshot(self) -> list[d.WatchBatch]:
        revision, changes = self._store.snapshot()
        parts = self._parts(changes, self._part) or [()]
        return [d.WatchBatch(True, part, revision, i < len(parts) - 1) for i, part in enumerate(parts)]

    def _parts(self, changes: Sequence[d.Change], most: int) -> list[tuple[d.Change, ...]]:
        """`changes` cut into runs of at most `most` changes and about `part_bytes` bytes."""
        parts: list[tuple[d.Change, ...]] = []
        run: list[d.Change] = []
        size = 0
        for change in changes:
            weight = self._measure(change) + 16  # + the Change's own framing in the response
            if run and (len(run) >= most or size + weight > self._part_bytes):
                parts.append(tuple(run))
                run, size = [], 0
            run.append(change)
            size += weight
        if run:
            parts.append(tuple(run))
        return parts

    # --- waking --------------------------------------------------------------------------

    def _committed(self, revision: int) -> None:
        """Commit listener; runs in the store's worker thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._advance, revision)
        except RuntimeError:  # the loop closed in between: nobody is watching any more
            pass

    def _advance(self, revision: int) -> None:
        if revision > self._head:
            self._head = revision
            if self._wakeup is not None:
                self._wakeup.set()
                self._wakeup = asyncio.Event()

    async def _wait_past(self, held: int, timeout: float) -> bool:
        """True once a revision after `held` is known; False after `timeout` seconds without."""
        try:
            async with asyncio.timeout(timeout):
                while self._head <= held and not self._closing:
                    assert self._wakeup is not None
                    await self._wakeup.wait()
        except TimeoutError:
            return False
        return True

    def _enter(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first watcher, or a new loop (tests): fresh primitives
            self._loop, self._wakeup, self._poller = loop, asyncio.Event(), None
        self._watchers += 1
        if self._poller is None or self._poller.done():
            self._poller = loop.create_task(self._poll(), name="registry-watch-poll")

    def _leave(self) -> None:
        self._watchers -= 1
        if self._watchers == 0 and self._poller is not None:
            self._poller.cancel()
            self._poller = None

    async def _poll(self) -> None:
        """Finds revisions committed by other processes; only runs while someone watches."""
        failing = False
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                head = await asyncio.to_thread(self._store.last_revision)
            except Exception as exc:
                if not failing:  # once per outage, not every poll
                    log.warning("registry watch cannot read the change log: %s", exc)
                failing = True
                continue
            failing = False
            self._advance(head)
