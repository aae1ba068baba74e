"""The real-Triton fixture itself: a tritonserver that answers, with the models it declared."""

from __future__ import annotations

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg


async def test_real_triton_serves_its_models(real_triton):
    async with grpc.aio.insecure_channel(real_triton.address) as channel:
        stub = pbg.GRPCInferenceServiceStub(channel)
        assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
        meta = await stub.ServerMetadata(pb.ServerMetadataRequest())
        assert meta.name == "triton" and meta.version.startswith("2.")
        index = await stub.RepositoryIndex(pb.RepositoryIndexRequest())
        states = {m.name: m.state for m in index.models}
        assert {name: "READY" for name in real_triton.models}.items() <= states.items()
