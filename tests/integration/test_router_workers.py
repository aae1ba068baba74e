"""`python -m services.router --workers 2`: two router processes on one port (SO_REUSEPORT), each
with its own metrics port and outbox; a worker that dies is restarted; SIGTERM stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.router.config import parse_args
from services.router.workers import worker_argv, worker_outbox, workers_for
from tests.helpers.envoy import free_port


def children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def metrics_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as resp:
            return b"harness_router" in resp.read()
    except OSError:
        return False


def wait_for(check, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return resp.status


def test_each_worker_gets_its_own_metrics_port_and_outbox():
    argv = worker_argv(["--port", "0"], 1, port=5000, metrics_port=9461, http_port=5003, outbox="o-w1.db")

    def last(flag: str) -> str:  # argparse: the last occurrence wins
        return argv[len(argv) - 1 - argv[::-1].index(flag) + 1]

    assert [last(f) for f in ("--port", "--metrics-port", "--http-port", "--outbox", "--worker-index")] == [
        "5000", "9462", "5003", "o-w1.db", "1",
    ]  # fmt: skip
    assert worker_outbox("", 5000, 2) == ".harness/state/router-5000-outbox-w2.db"
    assert worker_outbox("/s/r.db", 5000, 0) == "/s/r-w0.db"


def test_two_workers_share_one_port_and_are_kept_running(tmp_path: Path):
    port, metrics = free_port(), free_port()
    dead = "127.0.0.1:1"  # no registry yet: workers serve, NOT_SERVING until a copy arrives
    cmd = [
        sys.executable, "-m", "services.router", "--workers", "2", "--port", str(port),
        "--metrics-port", str(metrics), "--http-port", "-1", "--outbox", str(tmp_path / "outbox.db"),
        "--registry", dead, "--pool", dead, "--audit", dead, "--cost", dead, "--grace", "1",
    ]  # fmt: skip
    sup = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        wait_for(lambda: len(children(sup.pid)) == 2)
        wait_for(lambda: metrics_up(metrics) and metrics_up(metrics + 1))
        assert health(port) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert {p.name for p in tmp_path.iterdir()} >= {"outbox-w0.db", "outbox-w1.db"}
        first = children(sup.pid)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(children(sup.pid)) == 2 and victim not in children(sup.pid))
        wait_for(lambda: metrics_up(metrics) and metrics_up(metrics + 1))
        workers = children(sup.pid)
    finally:
        sup.send_signal(signal.SIGTERM)
        code = sup.wait(timeout=30)
    assert code == 0
    assert not any(_alive(p) for p in workers)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0


def test_one_worker_unless_asked_and_every_core_only_with_redis():
    assert workers_for(1, "redis://r") == 1 and workers_for(3, "") == 3
    assert workers_for(0, "redis://r") == (os.cpu_count() or 1)
    assert workers_for(0, "") == 1  # without Redis each process would enforce limits alone
    assert parse_args(["--redis", "redis://r"]).workers == 1  # the default: one process, one metrics port
