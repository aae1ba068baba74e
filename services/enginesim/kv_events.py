"""Publishes the simulator's KV-cache events as vLLM does (``--kv-events-config`` with the zmq
publisher): a PUB socket sending ``[topic, seq, KVEventBatch]`` and a ROUTER replay socket that
resends buffered batches from a requested sequence number (services/common/kv_events_wire.py
has the format). The topic is ``kv@<pod>@<model>``, as llm-d's vLLM deployments set it, so a
subscriber knows which model's cache an event is about.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

import zmq
import zmq.asyncio

from services.common.kv_events_wire import MAP, KvEvent, encode_batch, seq_bytes

log = logging.getLogger("enginesim.kv_events")


class KvEventPublisher:
    """One per simulator process; every loaded model publishes through it (sequence numbers are
    per publisher, as in vLLM). ``start`` binds; port 0 picks a free port (see ``endpoint``)."""

    def __init__(
        self,
        host: str,
        port: int,
        replay_port: int = -1,
        pod: str = "enginesim",
        fmt: str = MAP,
        buffer_steps: int = 10_000,
    ) -> None:
        self._host, self._port, self._replay_port = host, port, replay_port
        self._pod, self._fmt = pod, fmt
        self._buffer: deque[tuple[int, bytes, bytes]] = deque(maxlen=buffer_steps)  # seq, topic, payload
        self._seq = 0
        self._ctx = zmq.asyncio.Context()  # the replay socket, served on the event loop
        self._pub_ctx = zmq.Context()  # PUB sends are non-blocking calls from the step loop
        self._pub: zmq.Socket | None = None
        self._replay: zmq.asyncio.Socket | None = None
        self._replay_task: asyncio.Task[None] | None = None
        self.endpoint = ""  # tcp://host:port of the PUB socket once bound
        self.replay_endpoint = ""  # "" when replay is off

    def start(self) -> None:
        self._pub = self._pub_ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, 100_000)
        self._pub.setsockopt(zmq.LINGER, 0)
        self.endpoint = _bind(self._pub, self._host, self._port)
        if self._replay_port >= 0:
            self._replay = self._ctx.socket(zmq.ROUTER)
            self._replay.setsockopt(zmq.LINGER, 0)
            self.replay_endpoint = _bind(self._replay, self._host, self._replay_port)
            self._replay_task = asyncio.create_task(self._serve_replay(), name="kv-events-replay")

    def publish(self, model: str, events: list[KvEvent]) -> None:
        """Sends one batch now (never blocks: past the high-water mark ZeroMQ drops it, and the
        subscriber sees a sequence gap, as with vLLM)."""
        if self._pub is None or not events:
            return
        seq, self._seq = self._seq, self._seq + 1
        topic = f"kv@{self._pod}@{model}".encode()
        payload = encode_batch(events, time.time(), self._fmt)
        self._buffer.append((seq, topic, payload))
        with contextlib.suppress(zmq.Again):
            self._pub.send_multipart((topic, seq_bytes(seq), payload), flags=zmq.NOBLOCK)

    async def _serve_replay(self) -> None:
        sock = self._replay
        while True:
            try:
                frames = await sock.recv_multipart()
            except (asyncio.CancelledError, zmq.ZMQError):
                return
            if len(frames) != 3 or len(frames[2]) != 8:
                log.warning("invalid replay request (%d frames)", len(frames))
                continue
            client, _, start = frames
            start_seq = int.from_bytes(start, "big", signed=True)
            for seq, _topic, payload in list(self._buffer):
                if seq >= start_seq:
                    await sock.send_multipart((client, b"", seq_bytes(seq), payload))
            await sock.send_multipart((client, b"", seq_bytes(-1), b""))

    async def close(self) -> None:
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
        for sock in (self._pub, self._replay):
            if sock is not None:
                sock.close(0)
        self._pub = self._replay = None
        self._ctx.term()
        self._pub_ctx.term()


def _bind(sock: zmq.Socket, host: str, port: int) -> str:
    if port == 0:
        sock.bind(f"tcp://{host}:*")
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)
    sock.bind(f"tcp://{host}:{port}")
    return f"tcp://{host}:{port}"
