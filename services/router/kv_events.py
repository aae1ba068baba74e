"""Follows engines' KV-cache event streams (vLLM's ZeroMQ format, services/common/kv_events_wire.py)
into the scheduler's index of the blocks each engine holds (scheduling/engine_blocks.py).

Each router process (every worker of ``--workers N`` too) runs one subscriber task per endpoint
that publishes, on its own event loop: no lock, no shared state between processes, and the hot
path only reads the index. An endpoint publishes when its pool labels name the addresses:
``kv-events`` (the PUB socket, ``tcp://host:port``) and optionally ``kv-events-replay`` (the
ROUTER replay socket).

Sequence numbers are per publisher. A gap (batches lost: the PUB socket's high-water mark, a
reconnect) is filled from the replay socket when there is one and it still buffers them;
otherwise the endpoint's index is cleared and resyncs (the scorer falls back to the approximate
scorer for it meanwhile). Numbering that starts again at 0 is an engine restart: its cache is
empty. Replayed batches carry no topic, so they are attributed to the one model the stream has
carried; a stream that carries several models cannot be replayed, and a gap there resyncs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

import zmq
import zmq.asyncio

from services.common.kv_events_wire import KvEventDecodeError, decode_batch, parse_seq, seq_bytes
from services.router.scheduling.engine_blocks import EngineBlockIndex

log = logging.getLogger("harness.router.kv_events")

EVENTS_LABEL, REPLAY_LABEL = "kv-events", "kv-events-replay"
REPLAY_TIMEOUT_S = 1.0
MAX_REPLAY_BATCHES = 100_000


def model_of(topic: bytes) -> str:
    """The model in a ``kv@<pod>@<model>`` topic; "" for any other topic (vLLM's default is "")."""
    parts = topic.decode("utf-8", "replace").split("@")
    return parts[2] if len(parts) == 3 and parts[0] == "kv" else ""


def valid_address(address: str) -> bool:
    return address.startswith(("tcp://", "ipc://")) and len(address) <= 256


class KvEventSubscriber:
    """One endpoint's stream -> the index."""

    def __init__(
        self,
        endpoint: str,
        address: str,
        replay_address: str,
        index: EngineBlockIndex,
        ctx: zmq.asyncio.Context,
    ) -> None:
        self.endpoint, self.address, self.replay_address = endpoint, address, replay_address
        self._index, self._ctx = index, ctx
        self.last_seq = -1
        self.models: set[str] = set()
        self.batches = self.gaps = self.replayed = self.resyncs = self.restarts = self.bad = 0

    async def run(self) -> None:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.MAXMSGSIZE, 16 << 20)
        sock.connect(self.address)
        sock.subscribe(b"")
        try:
            while True:
                frames = await sock.recv_multipart()
                self.receive(frames)
                if self._gap is not None:
                    await self._recover(*self._gap)
        finally:
            sock.close(0)

    _gap: tuple[int, str] | None = None  # (seq, model) of a batch that arrived after a gap
    _pending = None  # that batch, applied once the gap is filled or given up

    def receive(self, frames: list[bytes]) -> None:
        """Applies one ``[topic, seq, payload]`` message, noting a gap for ``run`` to recover."""
        self._gap = None
        if len(frames) != 3:
            self.bad += 1
            return
        topic, raw_seq, payload = frames
        try:
            seq = parse_seq(raw_seq)
            batch = decode_batch(payload)
        except KvEventDecodeError as exc:
            self.bad += 1
            log.warning("%s: undecodable KV event batch (%s); resyncing", self.endpoint, exc)
            self._index.lost(self.endpoint)
            return
        model = model_of(topic)
        self.models.add(model)
        last = self.last_seq
        if last < 0 and seq > 0:  # joined a running stream: what it stored before is in the replay buffer
            self.gaps += 1
            self._gap, self._pending = (seq, model), batch
            return
        if last >= 0 and seq <= last:
            if seq != 0:
                return  # a duplicate
            self.restarts += 1
            self._index.restart(self.endpoint)
        elif last >= 0 and seq > last + 1:
            self.gaps += 1
            self._gap, self._pending = (seq, model), batch
            return
        self.last_seq = seq
        self.batches += 1
        self._index.apply(self.endpoint, model, batch)

    async def _recover(self, seq: int, model: str) -> None:
        """Fills the gap before ``seq`` from the replay socket, else resyncs; then applies it."""
        pending, self._gap = self._pending, None
        if not (
            self.replay_address
            and len(self.models) == 1
            and await self._replay(self.last_seq + 1, seq, model)
        ):
            self.resyncs += 1
            log.info("%s: KV events %d..%d lost; resyncing", self.endpoint, self.last_seq + 1, seq - 1)
            self._index.lost(self.endpoint)
        self.last_seq = seq
        self.batches += 1
        self._index.apply(self.endpoint, model, pending)

    async def _replay(self, start: int, stop: int, model: str) -> bool:
        """Applies batches start..stop-1 from the replay socket; False if it cannot supply them."""
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.replay_address)
            await sock.send_multipart((b"", seq_bytes(start)))
            batches = []
            for _ in range(MAX_REPLAY_BATCHES):
                frames = await asyncio.wait_for(sock.recv_multipart(), REPLAY_TIMEOUT_S)
                if len(frames) not in (3, 4):  # vLLM: ["", seq, payload]; TensorRT-LLM adds the topic
                    return False
                seq = parse_seq(frames[-2])
                if seq < 0:
                    break
                if start <= seq < stop:
                    batches.append((seq, decode_batch(frames[-1])))
        except (TimeoutError, KvEventDecodeError, zmq.ZMQError):
            return False
        finally:
            sock.close(0)
        if [s for s, _ in batches] != list(range(start, stop)):
            return False  # the buffer no longer reaches back that far
        for _, batch in batches:
            self._index.apply(self.endpoint, model, batch)
        self.replayed += len(batches)
        self.batches += len(batches)
        return True


class KvEventFollower:
    """Keeps one subscriber task per publishing endpoint, as endpoints come, change and go."""

    def __init__(self, index: EngineBlockIndex) -> None:
        self._index = index
        self._ctx = zmq.asyncio.Context()
        self._tasks: dict[str, tuple[str, str, asyncio.Task[None], KvEventSubscriber]] = {}

    def sync(self, sources: Mapping[str, tuple[str, str]]) -> None:
        """``sources``: endpoint -> (events address, replay address or ""), for every endpoint
        that publishes now. Called on each pool change (on the event loop)."""
        for name in list(self._tasks):
            address, replay, task, _ = self._tasks[name]
            if sources.get(name) != (address, replay):
                task.cancel()
                del self._tasks[name]
                self._index.forget(name)
        for name, (address, replay) in sources.items():
            if name in self._tasks:
                continue
            if not valid_address(address) or (replay and not valid_address(replay)):
                log.warning(
                    "%s: KV events address %r / %r is not tcp:// or ipc://; ignored", name, address, replay
                )
                continue
            sub = KvEventSubscriber(name, address, replay, self._index, self._ctx)
            task = asyncio.get_running_loop().create_task(self._follow(sub), name=f"kv-events-{name}")
            self._tasks[name] = (address, replay, task, sub)

    def subscriber(self, endpoint: str) -> KvEventSubscriber | None:
        entry = self._tasks.get(endpoint)
        return entry[3] if entry else None

    def subscribers(self) -> list[KvEventSubscriber]:
        return [entry[3] for entry in self._tasks.values()]

    def indexed_blocks(self, endpoint: str) -> int:
        return self._index.size(endpoint)

    async def _follow(self, sub: KvEventSubscriber) -> None:
        while True:
            try:
                await sub.run()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep following: the index resyncs from the next events
                log.exception("%s: KV event subscriber failed; restarting it", sub.endpoint)
                self._index.lost(sub.endpoint)
                sub.last_seq = -1
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        tasks = [t for _, _, t, _ in self._tasks.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._ctx.term()
