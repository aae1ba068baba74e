"""A bare grpc.aio relay of Triton's ModelStreamInfer: one stream in, one stream out, no logic.

The floor of any Python gRPC hop on the token path. bench/router_overhead.py runs it beside the
router (plaintext on both sides, as the direct path is) so the router's own cost can be told
from the cost of being a Python gRPC relay at all.

Usage: python bench/_grpc_relay.py UPSTREAM_HOST:PORT   (prints the port it listens on)
"""

from __future__ import annotations

import asyncio
import sys

import grpc
from tritonclient.grpc import service_pb2_grpc as pb_grpc


class Relay(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, upstream: str) -> None:
        self._stub = pb_grpc.GRPCInferenceServiceStub(grpc.aio.insecure_channel(upstream))

    async def ModelStreamInfer(self, request_iterator, context):
        """Forwards the first request upstream and relays responses until the final one."""
        request = await request_iterator.__anext__()
        async for response in self._stub.ModelStreamInfer(iter([request])):
            yield response
            if response.infer_response.parameters["triton_final_response"].bool_param:
                break


async def main(upstream: str) -> None:
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Relay(upstream), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
