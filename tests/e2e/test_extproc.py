"""The ext_proc endpoint picker end to end: a second, real Envoy built from the stack's own
bootstrap (`services/envoy/extproc.py`) asks the stack's routers to decide each Triton
`ModelStreamInfer` request and carries the tokens from the picked engine itself. The stock
tritonclient calls it with the demo agent's certificate, as it calls the front door."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc.aio as tgrpc_aio
import yaml
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from harness.audit.v1 import audit_pb2, audit_pb2_grpc

from bench._common import stream_one
from services.envoy.extproc import with_extproc
from tests.e2e.calls import bearer, demo_channel, triton_client
from tests.helpers.envoy import start_envoy

pytestmark = pytest.mark.e2e
MODEL = "llama-3-8b"


def _start(stack, tmp_path: Path, count_tokens: bool):
    base = yaml.safe_load((stack.root / "envoy.yaml").read_text())
    cfg = with_extproc(base, listen_port=0, admin_port=0, count_tokens=count_tokens)
    path = tmp_path / f"extproc-{count_tokens}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    envoy = start_envoy(path)
    envoy.wait_ready(timeout=60, clusters=["router"])
    return envoy


@pytest.fixture(scope="module")
def counting_envoy(stack, tmp_path_factory):
    envoy = _start(stack, tmp_path_factory.mktemp("extproc"), count_tokens=True)
    yield envoy
    envoy.stop()


def _client(stack, port: int) -> tgrpc_aio.InferenceServerClient:
    return triton_client(stack, f"127.0.0.1:{port}", aio=True)


async def _audit(stack, request_id: str) -> list:
    async with demo_channel(stack) as channel:
        audit = audit_pb2_grpc.AuditStub(channel)
        query = audit_pb2.QueryRequest(filter=audit_pb2.AuditFilter(request_id=request_id))
        for _ in range(50):  # events ship asynchronously
            records = (await audit.Query(query, metadata=bearer(stack.token("alice")), timeout=10)).records
            if records:
                return [r.event for r in records]
            await asyncio.sleep(0.2)
    return []


async def test_a_stream_is_decided_by_the_router_and_carried_by_envoy(stack, counting_envoy):
    request_id = str(uuid.uuid4())
    headers = {"authorization": f"Bearer {stack.token('alice')}", "x-request-id": request_id}
    async with _client(stack, counting_envoy.listener_port("harness_extproc")) as client:
        _, _, chunks = await stream_one(client, MODEL, "Summarise the ledger policy", 8, "one", headers)
    assert chunks >= 2  # deltas, then the final response
    events = await _audit(stack, request_id)
    calls = [e for e in events if e.details["frontdoor"] == "extproc"]
    assert calls, f"no audit record of the ext_proc call: {events}"
    assert calls[0].status == "OK" and calls[0].actor.user == "alice" and calls[0].actor.agent == "demo-agent"
    assert calls[0].details["output_tokens"] == 8  # counted from the responses Envoy streamed through


async def test_policy_refusals_come_back_as_grpc_statuses(stack, counting_envoy):
    headers = {"authorization": f"Bearer {stack.token('mallory')}"}
    async with _client(stack, counting_envoy.listener_port("harness_extproc")) as client:
        with pytest.raises(Exception) as caught:
            await stream_one(client, MODEL, "Summarise the ledger policy", 8, "m", headers)
    assert "PERMISSION_DENIED" in str(caught.value)


async def test_an_agent_with_an_output_policy_is_refused_where_envoy_hides_the_response(stack, tmp_path):
    envoy = _start(stack, tmp_path, count_tokens=False)  # response body not sent to the router
    try:
        headers = {"authorization": f"Bearer {stack.token('alice')}"}
        async with _client(stack, envoy.listener_port("harness_extproc")) as client:
            with pytest.raises(Exception) as caught:
                await stream_one(client, MODEL, "Summarise the ledger policy", 8, "p", headers)
    finally:
        envoy.stop()
    assert "FAILED_PRECONDITION" in str(caught.value) and "output redaction policy" in str(caught.value)


async def test_only_envoy_may_call_the_ext_proc_api(stack):
    """An agent reaching a router directly must not be able to name an identity in the
    headers it hands to the processor."""
    router = next(
        line.split(" serving on ")[1].split()[0]
        for line in (stack.root / "logs" / "router-1.log").read_text().splitlines()
        if " serving on " in line
    )
    creds = grpc.ssl_channel_credentials(
        Path(stack.env["HARNESS_CA"]).read_bytes(),
        Path(stack.env["HARNESS_KEY"]).read_bytes(),
        Path(stack.env["HARNESS_CERT"]).read_bytes(),
    )
    forged = ep.ProcessingRequest()
    forged.request_headers.headers.headers.add(
        key="x-forwarded-client-cert", raw_value=b"URI=spiffe://x/agent/risk"
    )
    async with grpc.aio.secure_channel(
        router, creds, options=[("grpc.ssl_target_name_override", "router")]
    ) as ch:
        call = ep_grpc.ExternalProcessorStub(ch).Process(iter([forged]), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
