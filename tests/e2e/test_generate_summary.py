"""The final Generate chunk tells the caller what the call cost, the GPU time charged and the
trace to look it up by; `x-request-id` arrives as a response header."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2, cost_pb2_grpc
from harness.router.v1 import router_pb2, router_pb2_grpc

from tests.e2e.calls import bearer, demo_channel
from tests.e2e.stack import REPO

pytestmark = pytest.mark.e2e


async def test_final_chunk_has_cost_gpu_seconds_and_trace_id_that_finds_the_call(stack):
    alice = bearer(stack.token("alice"))
    since = Timestamp()
    since.FromMicroseconds(int(time.time() * 1e6))
    async with demo_channel(stack) as channel:
        req = router_pb2.GenerateRequest(
            prompt=f"Summarise the ledger policy ({time.time_ns()})",  # never a cached answer
            sampling=common_pb2.SamplingParams(max_tokens=16),
        )
        call = router_pb2_grpc.RouterStub(channel).Generate(req, metadata=alice, timeout=30)
        headers = dict(await call.initial_metadata())
        chunks = [m async for m in call]
        trailers = dict(await call.trailing_metadata())
        summary = chunks[-1].summary
        assert chunks[-1].final and summary.usage.output_tokens == 16
        assert headers["x-request-id"] == summary.request_id and "x-request-id" not in trailers
        assert summary.cost_micro_usd > 0 and summary.usage.gpu_seconds > 0
        assert re.fullmatch(r"[0-9a-f]{32}", summary.trace_id)

        # The ledger charged the same request the same: cost to the micro-USD, the same GPU time.
        cost = cost_pb2_grpc.CostStub(channel)
        report = cost_pb2.ReportRequest(group_by=["agent"], start_time=since)
        rows = []
        for _ in range(100):
            rows = [r for r in (await cost.Report(report, metadata=alice, timeout=10)).rows
                    if r.group["agent"] == "demo-agent"]  # fmt: skip
            if rows and rows[0].requests:
                break
            await asyncio.sleep(0.2)
    assert rows and rows[0].requests == 1, rows
    assert rows[0].cost_micro_usd == summary.cost_micro_usd
    assert rows[0].gpu_seconds == pytest.approx(summary.usage.gpu_seconds, rel=1e-9)

    # The trace id is all `harness audit lineage` needs (no audit query first).
    argv = [sys.executable, "-m", "services.cli.main", "audit", "lineage", "--trace", summary.trace_id,
            "--root", str(stack.root)]  # fmt: skip
    out = None
    for _ in range(50):
        out = await asyncio.to_thread(
            subprocess.run, argv, cwd=REPO, capture_output=True, text=True, timeout=30
        )
        if "model:llama-3-8b" in out.stdout:
            break
        await asyncio.sleep(0.2)
    assert out is not None and out.returncode == 0, out.stderr if out else ""
    assert "user:alice" in out.stdout and "agent:demo-agent@v1" in out.stdout
    assert "model:llama-3-8b invoke allow" in out.stdout
