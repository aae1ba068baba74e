"""The router's endpoint copy follows a real WatchEndpoints stream (a stand-in pool servicer on a
real gRPC server), and keeps following it when one update cannot be applied."""

from __future__ import annotations

import asyncio

import grpc
from harness.pool.v1 import pool_pb2, pool_pb2_grpc

from services.router.views import EndpointView
from tests.integration.test_router_hot_path import TRITON_MODEL, endpoint


class Pool(pool_pb2_grpc.PoolServicer):
    """Each watch gets a snapshot of the current endpoints, then the stream stays open."""

    def __init__(self) -> None:
        self.endpoints = [endpoint("sim-0", "127.0.0.1:1")]
        self.revision = 1
        self.watches = 0

    async def WatchEndpoints(self, request, context):
        self.watches += 1
        yield pool_pb2.WatchEndpointsResponse(snapshot=True, endpoints=self.endpoints, revision=self.revision)
        await asyncio.Event().wait()


async def test_an_update_that_cannot_be_applied_does_not_end_the_watch(caplog):
    pool = Pool()
    server = grpc.aio.server()
    pool_pb2_grpc.add_PoolServicer_to_server(pool, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    view = EndpointView(channel)
    apply, failures = view.apply, []

    def failing_once(*args):
        if not failures:
            failures.append(args)
            raise RuntimeError("could not apply")
        apply(*args)

    view.apply = failing_once
    view.start()
    try:
        assert await view.wait_ready(5.0)  # the second watch's snapshot was applied
        assert [c.name for c in view.candidates(TRITON_MODEL)] == ["sim-0"]
        assert failures and pool.watches == 2
        assert any("applying a pool update failed" in r.getMessage() for r in caplog.records)
    finally:
        await view.stop()
        await channel.close()
        await server.stop(0)
