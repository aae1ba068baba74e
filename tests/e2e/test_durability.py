"""Durability under crashes (issue 7): 1,000 Generate requests through Envoy while the audit
service, then the cost service, then a router are killed with SIGKILL and restarted. Every
accepted request (the client got the final summary) must end with exactly one model-call audit
record and exactly one usage record: nothing lost, nothing duplicated.

The test starts its own stack (the shared session stack is not disturbed). `harness up` tears
the whole stack down as soon as one child exits, so once the stack is healthy the test pauses
the `harness up` supervisor (SIGSTOP) and plays the operator who restarts a crashed service:
same command line, environment and working directory, read from /proc before the kill.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import pytest
import yaml
from harness.audit.v1 import audit_pb2, audit_pb2_grpc
from harness.common.v1 import common_pb2
from harness.router.v1 import router_pb2, router_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.stack import RunningStack, launch, shutdown

pytestmark = pytest.mark.e2e

REQUESTS = 1000
WORKERS = 8
# Paced so that the crashes and restarts happen in the middle of the load (unpaced, the stack
# at --time-scale 1000 serves the 1,000 requests in a few seconds).
RATE_PER_S = 50.0
# Completed requests (accepted or not) after which each victim is killed, in order.
KILLS = (("audit", 150), ("cost", 400), ("router-1", 650))
DRAIN_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def durable_stack(tmp_path_factory) -> RunningStack:
    running = launch(tmp_path_factory.mktemp("durable") / ".harness", time_scale=1000)
    # Pause the supervisor (it would restart what the test kills): the test restarts the killed
    # processes itself, as an operator would.
    running.proc.send_signal(signal.SIGSTOP)
    try:
        yield running
    finally:
        shutdown(running)


def _crash_and_restart(stack: RunningStack, name: str) -> subprocess.Popen:
    """SIGKILL one stack process and start it again exactly as it was started."""
    pid = stack.pids()[name]
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    env = dict(
        entry.decode().partition("=")[::2]
        for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if entry
    )
    cwd = os.readlink(f"/proc/{pid}/cwd")
    os.kill(pid, signal.SIGKILL)
    time.sleep(1.0)
    with open(stack.root / "logs" / f"{name}-restarted.log", "ab") as log:
        child = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    stack.restarted.append(child)
    return child


def _channel(stack: RunningStack) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(stack.env["HARNESS_CA"]).read_bytes(),
        private_key=Path(stack.env["HARNESS_KEY"]).read_bytes(),
        certificate_chain=Path(stack.env["HARNESS_CERT"]).read_bytes(),
    )
    return grpc.aio.secure_channel(stack.env["HARNESS_ADDR"], creds)


def _sqlite_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def _outbox_pending(stack: RunningStack) -> int:
    """Events still in the routers' outboxes, as each router reports them (its
    harness_router_events_pending gauge): a running router holds its outbox file alone."""
    config = yaml.safe_load((stack.root / "prometheus.yml").read_text())
    (routers,) = [job for job in config["scrape_configs"] if job["job_name"] == "router"]
    total = 0
    for target in routers["static_configs"][0]["targets"]:
        with urllib.request.urlopen(f"http://{target}{routers['metrics_path']}", timeout=10) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            if family.name == "harness_router_events_pending":
                total += int(sum(sample.value for sample in family.samples))
    return total


def _usage_rows(stack: RunningStack, request_ids: set[str]) -> Counter:
    with _sqlite_ro(stack.state / "cost.db") as db:
        rows = db.execute("SELECT request_id FROM usage_ledger").fetchall()
    return Counter(rid for (rid,) in rows if rid in request_ids)


async def _model_call_records(audit, metadata, request_id: str) -> int:
    query = audit_pb2.QueryRequest(filter=audit_pb2.AuditFilter(request_id=request_id))
    resp = await audit.Query(query, metadata=metadata, timeout=10)
    return sum(1 for r in resp.records if r.event.kind == common_pb2.AUDIT_EVENT_KIND_MODEL_CALL)


async def test_no_record_is_lost_or_duplicated_when_services_crash(durable_stack):
    stack = durable_stack
    metadata = (("authorization", f"Bearer {stack.token('alice')}"),)
    accepted: list[str] = []
    failures: Counter = Counter()
    done = 0
    started = time.monotonic()
    async with _channel(stack) as channel:
        router = router_pb2_grpc.RouterStub(channel)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(REQUESTS):
            queue.put_nowait(i)

        async def worker() -> None:
            nonlocal done
            while not queue.empty():
                i = queue.get_nowait()
                await asyncio.sleep(max(0.0, started + i / RATE_PER_S - time.monotonic()))
                req = router_pb2.GenerateRequest(
                    prompt=f"Durability probe {i}: summarise ledger entry {i * 7919 % 10007}",
                    sampling=common_pb2.SamplingParams(max_tokens=4, temperature=0.0),
                )
                try:
                    final = None
                    async for msg in router.Generate(req, metadata=metadata, timeout=30):
                        if msg.final:
                            final = msg
                    if final is not None and final.summary.request_id:
                        accepted.append(final.summary.request_id)
                    else:
                        failures["no final summary"] += 1
                except grpc.aio.AioRpcError as exc:
                    failures[exc.code().name] += 1
                done += 1

        async def crasher() -> None:
            for name, after in KILLS:
                while done < after:
                    await asyncio.sleep(0.05)
                at = done
                child = await asyncio.to_thread(_crash_and_restart, stack, name)
                print(f"\n{name}: SIGKILL after {at} requests, restarted as pid {child.pid}", flush=True)

        workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
        crashes = asyncio.create_task(crasher())
        await asyncio.gather(*workers)
        load_s = time.monotonic() - started
        assert crashes.done(), f"the load ended before every crash ran ({done} requests)"
        await crashes

        for child in stack.restarted:
            assert child.poll() is None, f"a restarted service exited with {child.returncode}"

        ids = set(accepted)
        assert len(ids) == len(accepted), "two accepted requests share a request id"
        assert len(accepted) + sum(failures.values()) == REQUESTS

        # Bounded wait: the outboxes drain and every accepted request has its records.
        audit = audit_pb2_grpc.AuditStub(channel)
        sem = asyncio.Semaphore(16)

        async def audit_count(rid: str) -> tuple[str, int]:
            async with sem:
                return rid, await _model_call_records(audit, metadata, rid)

        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while True:
            pending = _outbox_pending(stack)
            usage = _usage_rows(stack, ids)
            if (pending == 0 and len(usage) == len(ids)) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        audit_counts = dict(await asyncio.gather(*(audit_count(rid) for rid in ids)))
        usage = _usage_rows(stack, ids)
        verify = await audit.Verify(audit_pb2.VerifyRequest(), metadata=metadata, timeout=30)

    audit_total = sum(audit_counts.values())
    usage_total = sum(usage.values())
    print(
        f"\nrequests {REQUESTS} in {load_s:.1f}s: accepted {len(accepted)}, failed {sum(failures.values())} "
        f"{dict(failures)}; outbox pending {pending}; model-call audit records {audit_total}; "
        f"usage records {usage_total}; audit chain ok={verify.ok} ({verify.checked} records)",
        flush=True,
    )
    missing_audit = sorted(rid for rid, n in audit_counts.items() if n == 0)
    extra_audit = sorted(rid for rid, n in audit_counts.items() if n > 1)
    missing_usage = sorted(ids - set(usage))
    extra_usage = sorted(rid for rid, n in usage.items() if n > 1)
    assert pending == 0, f"{pending} events still in the router outboxes after {DRAIN_TIMEOUT_S:.0f}s"
    assert not missing_audit, (
        f"{len(missing_audit)} accepted requests without an audit record: {missing_audit[:5]}"
    )
    assert not extra_audit, (
        f"{len(extra_audit)} accepted requests with duplicate audit records: {extra_audit[:5]}"
    )
    assert not missing_usage, (
        f"{len(missing_usage)} accepted requests without a usage record: {missing_usage[:5]}"
    )
    assert not extra_usage, (
        f"{len(extra_usage)} accepted requests with duplicate usage records: {extra_usage[:5]}"
    )
    assert audit_total == usage_total == len(accepted)
    assert verify.ok, f"audit chain broken at {verify.first_broken_sequence}: {verify.reason}"
    # The crashes interrupted the service, not the test: most requests were still served.
    assert len(accepted) >= REQUESTS * 0.8
