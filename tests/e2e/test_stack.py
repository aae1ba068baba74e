"""End to end, as a new user would: the whole local stack through Envoy with the demo cert and
token. Checks the thin slice (Generate -> registry -> simulator -> audit + cost) and every bad
input of the mesh foundation issue."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as tritongrpc
from harness.audit.v1 import audit_pb2, audit_pb2_grpc
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2, cost_pb2_grpc

from services.devtools.certs import make_certs
from services.devtools.drill_certs import make_foreign_ca_client, make_wrong_san_client
from tests.e2e.calls import bearer as _bearer
from tests.e2e.calls import channel as _channel
from tests.e2e.calls import demo_channel as _demo_channel
from tests.e2e.calls import generate as _generate

pytestmark = pytest.mark.e2e
MESH = [
    "grpc.health.v1.Health",
    "harness.audit.v1.Audit",
    "harness.cost.v1.Cost",
    "harness.pool.v1.Pool",
    "harness.registry.v1.Registry",
    "harness.router.v1.Router",
]


def test_grpcurl_lists_the_mesh_through_envoy(stack):
    grpcurl = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    env = stack.env
    out = subprocess.run(
        [grpcurl, "-cacert", env["HARNESS_CA"], "-cert", env["HARNESS_CERT"], "-key", env["HARNESS_KEY"],
         env["HARNESS_ADDR"], "list"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    listed = out.stdout.split()
    for service in MESH:
        assert service in listed


async def test_generate_streams_and_records_one_audit_and_one_usage_record(stack):
    alice = stack.token("alice")
    async with _demo_channel(stack) as channel:
        cost = cost_pb2_grpc.CostStub(channel)
        before = await cost.Report(
            cost_pb2.ReportRequest(group_by=["agent"]), metadata=_bearer(alice), timeout=10
        )
        chunks = await _generate(channel, _bearer(alice))
        text = "".join(c.text_delta for c in chunks)
        final = chunks[-1]
        assert final.final and text
        assert sum(1 for c in chunks if c.text_delta) >= 2, "text should arrive as a stream of deltas"
        summary = final.summary
        assert summary.model == "llama-3-8b" and summary.agent_version == "v1"
        # llama-3-8b is llama-3-8b-instruct, which sim-0 (Triton) and sim-2 (OpenAI) serve.
        assert summary.deployment in ("llama-3-8b@sim-0", "llama-3-8b@sim-2")
        assert summary.usage.output_tokens == 16 and summary.usage.input_tokens > 0
        assert summary.timing.ttft_ms > 0 and summary.timing.e2e_ms >= summary.timing.ttft_ms

        audit = audit_pb2_grpc.AuditStub(channel)
        query = audit_pb2.QueryRequest(filter=audit_pb2.AuditFilter(request_id=summary.request_id))
        records = []
        for _ in range(50):  # events ship asynchronously, within a second or so
            records = (await audit.Query(query, metadata=_bearer(alice), timeout=10)).records
            if records:
                break
            await asyncio.sleep(0.2)
        assert len(records) == 1
        event = records[0].event
        assert event.kind == common_pb2.AUDIT_EVENT_KIND_MODEL_CALL
        assert (event.actor.user, event.actor.agent, event.actor.agent_version) == (
            "alice",
            "demo-agent",
            "v1",
        )
        assert event.rule and "role:analyst" in event.rule

        def count(report) -> int:
            return sum(r.requests for r in report.rows if r.group.get("agent") == "demo-agent")

        after = before
        for _ in range(50):
            after = await cost.Report(
                cost_pb2.ReportRequest(group_by=["agent"]), metadata=_bearer(alice), timeout=10
            )
            if count(after) > count(before):
                break
            await asyncio.sleep(0.2)
        assert count(after) == count(before) + 1
        row = next(r for r in after.rows if r.group.get("agent") == "demo-agent")
        assert row.output_tokens >= 16 and row.cost_micro_usd > 0


SIM_MODELS = [
    {"llama-3-8b-instruct", "llama-3-8b-instruct-awq"},  # sim-0
    {"llama-3-8b-instruct-awq", "llama-3-70b-instruct-awq", "all-minilm-l6-v2"},  # sim-1
]


def test_two_simulators_with_different_model_sets_are_reachable_directly(stack):
    """Ops can reach each simulator at the addresses in .harness/env with the real tritonclient."""
    assert len(stack.triton_addrs) == len(stack.triton_metrics) == len(SIM_MODELS)
    ready = []
    for addr in stack.triton_addrs:
        client = tritongrpc.InferenceServerClient(addr)
        try:
            assert client.is_server_live() and client.is_server_ready()
            index = client.get_model_repository_index(as_json=True).get("models", [])
            ready.append({m["name"] for m in index if m.get("state") == "READY"})
        finally:
            client.close()
    # --no-preload: only the --load models, not the catalog's preload ones.
    assert ready == SIM_MODELS
    for url in stack.triton_metrics:
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = resp.read().decode()
        assert resp.status == 200
        assert "nv_gpu_memory_total_bytes" in body and "nv_inference_request_success" in body


async def test_forged_xfcc_header_is_ignored(stack):
    forged = (
        ("x-forwarded-client-cert", "URI=spiffe://harness.local/agent/ghost-agent"),
        *_bearer(stack.token("alice")),
    )
    async with _demo_channel(stack) as channel:
        chunks = await _generate(channel, forged)
    # Had the forged header been trusted, the unknown ghost-agent would have been NOT_FOUND.
    assert chunks[-1].final and chunks[-1].summary.model == "llama-3-8b"


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer not-a-jwt"),), grpc.StatusCode.UNAUTHENTICATED),
        ("mallory", grpc.StatusCode.PERMISSION_DENIED),
    ],
)
async def test_bad_credentials(stack, metadata, code):
    md = _bearer(stack.token(metadata)) if isinstance(metadata, str) else metadata
    async with _demo_channel(stack) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _generate(channel, md)
    assert err.value.code() == code, err.value.details()
    assert err.value.details()


async def test_unknown_agent_is_not_found(stack):
    bundle = make_certs(stack.root / "certs", agents=["ghost-agent"], services=[])
    leaf = bundle.agents["ghost-agent"]
    async with _channel(stack, leaf.cert, leaf.key) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _generate(channel, _bearer(stack.token("alice")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "ghost-agent" in err.value.details()


async def _handshake_fails(stack, cert: Path | None, key: Path | None) -> None:
    async with _channel(stack, cert, key) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _generate(channel, _bearer(stack.token("alice")))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_tls_handshake_refuses_bad_client_certs(stack, tmp_path):
    await _handshake_fails(stack, None, None)  # no client cert
    foreign = make_foreign_ca_client(tmp_path / "foreign", "intruder")
    await _handshake_fails(stack, foreign.cert, foreign.key)
    wrong = make_wrong_san_client(stack.root / "certs", "not-an-agent")
    await _handshake_fails(stack, wrong.cert, wrong.key)


def test_second_stack_on_busy_ports_names_the_port(stack, tmp_path):
    # Occupy one of the default ports ourselves so the error is certain.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", 8443))
        except OSError:
            pass  # already held by someone: the stack must report it all the same
        s.listen()
        out = subprocess.run(
            [str(Path(sys.executable).parent / "harness"), "up", "--root", str(tmp_path / ".h")],
            capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
    assert out.returncode == 1
    assert "port 8443 (envoy)" in out.stderr


async def test_routers_follow_a_registry_change(stack):
    """An agent set draining is refused by the routers (both behind Envoy), and served again once
    it is back online. The registry pushes its own writes to watchers at once (tests/integration/
    test_registry_watch.py); the 10 s bounds here are hang guards for a loaded machine's stack,
    where the calls served before the change arrives count against them too."""
    from services.cli.main import main as harness

    agent, metadata = stack.env["HARNESS_AGENT"], _bearer(stack.token("alice"))
    async with _demo_channel(stack) as channel:
        assert await _generate(channel, metadata, max_tokens=2)
        try:
            assert harness(["agents", "state", agent, "draining", "--root", str(stack.root)]) == 0
            started = time.monotonic()
            refused = 0
            while refused < 4:  # several in a row: both routers have it (Envoy spreads calls)
                try:
                    await _generate(channel, metadata, max_tokens=2)
                    refused = 0
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
                    assert "draining" in exc.details()
                    refused += 1
                assert time.monotonic() - started < 10.0, "a router still serves the draining agent"
        finally:  # back online the legal way: draining -> offline -> online
            for state in ("offline", "online"):
                assert harness(["agents", "state", agent, state, "--root", str(stack.root)]) == 0
        started = time.monotonic()
        while True:
            try:
                assert await _generate(channel, metadata, max_tokens=2)
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert time.monotonic() - started < 10.0


def test_tritonclient_code_points_at_the_harness_unchanged(stack):
    """The router's Triton-compatible front door, through Envoy, with the stock sync client."""
    import queue

    import numpy as np
    from tritonclient.utils import InferenceServerException

    client = tritongrpc.InferenceServerClient(
        stack.env["HARNESS_ADDR"],
        ssl=True,
        root_certificates=stack.env["HARNESS_CA"],
        private_key=stack.env["HARNESS_KEY"],
        certificate_chain=stack.env["HARNESS_CERT"],
    )
    headers = {"authorization": f"Bearer {stack.token('alice')}"}
    assert client.is_server_live(headers=headers) and client.is_server_ready(headers=headers)
    index = client.get_model_repository_index(headers=headers, as_json=True)["models"]
    assert {m["name"]: m["state"] for m in index} == {"llama-3-8b": "READY", "all-minilm-l6-v2": "READY"}

    def inputs(prompt: str, stream: bool) -> list:
        out = []
        for name, arr, dtype in (
            ("text_input", np.array([[prompt.encode()]], dtype=object), "BYTES"),
            ("max_tokens", np.array([[6]], dtype=np.int32), "INT32"),
            ("stream", np.array([[stream]], dtype=bool), "BOOL"),
            ("return_num_output_tokens", np.array([[True]], dtype=bool), "BOOL"),
        ):
            tensor = tritongrpc.InferInput(name, list(arr.shape), dtype)
            tensor.set_data_from_numpy(arr)
            out.append(tensor)
        return out

    # The Triton model name works too ("llama-3-8b-instruct" is what the agent called before).
    # Its engines are decoupled, so ModelInfer is refused as Triton refuses it.
    for model in ("llama-3-8b", "llama-3-8b-instruct"):
        assert client.get_model_config(model, headers=headers).config.model_transaction_policy.decoupled
        with pytest.raises(InferenceServerException) as err:
            client.infer(model, inputs("Summarise the ledger", False), headers=headers)
        assert err.value.status() == "StatusCode.UNIMPLEMENTED" and "decoupled" in err.value.message()

    events: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((result, error)), headers=headers)
    client.async_stream_infer("llama-3-8b", inputs("Stream it", True), enable_empty_final_response=True)
    deltas = []
    while True:
        result, error = events.get(timeout=30)
        assert error is None, error
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
        deltas.append(result.as_numpy("text_output").flat[0].decode())
    client.stop_stream()
    # demo-agent's data policy holds back output that could begin a PII value (digits) until
    # it could no longer be split, so 6 tokens may arrive in fewer responses.
    assert deltas and "".join(deltas).strip()

    with pytest.raises(InferenceServerException) as err:
        client.infer("llama-3-70b-awq", inputs("not mine", False), headers=headers)
    assert err.value.status() == "StatusCode.PERMISSION_DENIED" and "llama-3-70b-awq" in err.value.message()
    assert not client.is_model_ready("llama-3-70b-awq", headers=headers)
    with pytest.raises(InferenceServerException) as err:  # no user credentials: the same refusal as Generate
        client.infer("llama-3-8b", inputs("who am I", False))
    assert err.value.status() == "StatusCode.UNAUTHENTICATED"
    client.close()


@pytest.mark.stops_stack
def test_zz_sigterm_stops_every_child(stack):
    """Runs last of the session (the stops_stack marker): stopping the stack leaves no process behind."""
    pids = stack.pids()
    children = {"enginesim-0", "enginesim-1", "registry", "pool", "audit", "cost", "router-1", "router-2"}
    assert children | {"envoy"} <= set(pids)
    stack.proc.send_signal(signal.SIGTERM)
    assert stack.proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    alive = dict(pids)
    while alive and time.monotonic() < deadline:
        for name, pid in list(alive.items()):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                alive.pop(name)
        time.sleep(0.1)
    assert not alive, f"left behind: {alive}"
