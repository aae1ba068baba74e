"""How the e2e tests call the stack: through Envoy with a client certificate and user token."""

from __future__ import annotations

from pathlib import Path

import grpc
from harness.common.v1 import common_pb2
from harness.router.v1 import router_pb2, router_pb2_grpc


def channel(stack, cert: Path | None = None, key: Path | None = None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(stack.env["HARNESS_CA"]).read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.aio.secure_channel(stack.env["HARNESS_ADDR"], creds)


def demo_channel(stack) -> grpc.aio.Channel:
    return channel(stack, Path(stack.env["HARNESS_CERT"]), Path(stack.env["HARNESS_KEY"]))


def triton_client(stack, address: str | None = None, *, aio: bool = False):
    """tritonclient's gRPC client as an agent runs it: the demo agent's certificate, the stack's
    CA, Envoy's address unless another listener's is given."""
    if aio:
        import tritonclient.grpc.aio as client_module
    else:
        import tritonclient.grpc as client_module
    env = stack.env
    return client_module.InferenceServerClient(
        address or env["HARNESS_ADDR"], ssl=True, root_certificates=env["HARNESS_CA"],
        private_key=env["HARNESS_KEY"], certificate_chain=env["HARNESS_CERT"],
    )  # fmt: skip


def bearer(token: str):
    return (("authorization", f"Bearer {token}"),)


async def generate(channel, metadata, prompt="Summarise the ledger policy", max_tokens=16):
    stub = router_pb2_grpc.RouterStub(channel)
    req = router_pb2.GenerateRequest(prompt=prompt, sampling=common_pb2.SamplingParams(max_tokens=max_tokens))
    return [m async for m in stub.Generate(req, metadata=metadata, timeout=30)]
