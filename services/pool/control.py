"""Triton model control: RepositoryModelLoad / RepositoryModelUnload over the generated stubs.

Triton answers a load only when the model is READY (or the load failed), so the time the call
takes is the cold start. A failed load is INTERNAL with Triton's reason (for a model that does
not fit: "... not enough GPU memory ..."); it is raised as `ModelControlError` so the
deployment layer can try another endpoint. Channels are kept per address and dropped after a
transport error, like the probes do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from services.pool.access import NO_ACCESS, EngineAccess

UNLOAD_POLL_S = 0.05  # first pause between RepositoryIndex polls while a model unloads
UNLOAD_POLL_MAX_S = 1.0


class ModelControlError(Exception):
    """A load or unload the endpoint refused or did not answer."""

    def __init__(self, address: str, model: str, code: str, details: str) -> None:
        super().__init__(f"{model} on {address}: {code}: {details}")
        self.code = code
        self.details = details


class ModelControl(Protocol):
    async def load(self, address: str, model: str) -> float: ...  # seconds the load took
    async def unload(self, address: str, model: str) -> None: ...
    async def close(self) -> None: ...


class TritonControl:
    def __init__(
        self,
        load_timeout_s: float = 600.0,
        unload_timeout_s: float = 60.0,
        access: Callable[[str], EngineAccess] = lambda _address: NO_ACCESS,
    ) -> None:
        self._load_timeout = load_timeout_s
        self._unload_timeout = unload_timeout_s
        self._access = access  # headers/TLS per engine address
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, address: str) -> service_pb2_grpc.GRPCInferenceServiceStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = self._access(address).channel(address)
        return service_pb2_grpc.GRPCInferenceServiceStub(channel)

    async def _fail(self, address: str, model: str, exc: grpc.aio.AioRpcError) -> ModelControlError:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            channel = self._channels.pop(address, None)
            if channel is not None:
                await channel.close(grace=None)
        return ModelControlError(address, model, exc.code().name, exc.details() or "")

    async def load(self, address: str, model: str) -> float:
        started = time.monotonic()
        try:
            await self._stub(address).RepositoryModelLoad(
                service_pb2.RepositoryModelLoadRequest(model_name=model),
                timeout=self._load_timeout,
                metadata=self._access(address).headers,
            )
        except grpc.aio.AioRpcError as exc:
            raise await self._fail(address, model, exc) from exc
        return time.monotonic() - started

    async def unload(self, address: str, model: str) -> None:
        """Returns once the model has left UNLOADING: Triton answers the RPC while the model
        still drains and holds its memory. Waits at most the unload timeout in all."""
        deadline = time.monotonic() + self._unload_timeout
        stub, md = self._stub(address), self._access(address).headers
        try:
            await stub.RepositoryModelUnload(
                service_pb2.RepositoryModelUnloadRequest(model_name=model),
                timeout=self._unload_timeout,
                metadata=md,
            )
            pause = UNLOAD_POLL_S
            while await self._unloading(stub, model, deadline - time.monotonic(), md):
                await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(pause * 2, UNLOAD_POLL_MAX_S)
        except grpc.aio.AioRpcError as exc:
            raise await self._fail(address, model, exc) from exc

    # RepositoryIndex with a deadline of what is left; a model still UNLOADING then ends as
    # DEADLINE_EXCEEDED (the RPC's own, or this one when no time is left at all).
    @staticmethod
    async def _unloading(
        stub: service_pb2_grpc.GRPCInferenceServiceStub, model: str, left: float, md
    ) -> bool:
        if left <= 0:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                "still UNLOADING at the unload timeout",
            )
        index = await stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=left, metadata=md)
        return any(m.name == model and m.state == "UNLOADING" for m in index.models)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(grace=None)
