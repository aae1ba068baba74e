"""A bare grpc.aio relay of Triton's ModelStreamInfer: one stream in, one stream out, no logic.

The floor of any Python gRPC hop on the token path. bench/router_overhead.py runs it beside the
router twice: (r) plaintext on both sides, as the direct path is, and (rt) listening as the
router's front door does: mTLS with the router's own certificate, key and CA, client certificate
required and verified, and the router's server options (services/common/server.py). Upstream it
is plaintext to the simulator either way, as the router's Triton channel is. So the router's own
cost can be told from the cost of being a Python gRPC relay at all, and from that of the TLS and
certificate handling any authenticating hop pays.

Usage: python bench/_grpc_relay.py UPSTREAM_HOST:PORT [--tls-cert C --tls-key K --tls-ca CA]
       (prints the port it listens on)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: this checkout's services

import grpc
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from services.common.config import TlsFiles
from services.common.server import server_credentials, server_options


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


async def start_relay(upstream: str, tls: TlsFiles, host: str = "127.0.0.1") -> tuple[grpc.aio.Server, int]:
    """The relay, started on a free port: plaintext (grpc's defaults) when `tls` is empty, else
    as the router's server listens (its options; mTLS, client certificates required)."""
    if not tls.enabled:
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Relay(upstream), server)
        port = server.add_insecure_port(f"{host}:0")
    else:
        server = grpc.aio.server(options=server_options(reuse_port=False))  # the stack's routers: one worker
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Relay(upstream), server)
        port = server.add_secure_port(f"{host}:0", server_credentials(tls))
    await server.start()
    return server, port


async def main(args: argparse.Namespace) -> None:
    server, port = await start_relay(args.upstream, TlsFiles(args.tls_cert, args.tls_key, args.tls_ca))
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("upstream")
    p.add_argument("--tls-cert", default="")
    p.add_argument("--tls-key", default="")
    p.add_argument("--tls-ca", default="")
    asyncio.run(main(p.parse_args()))
