"""Start and stop a whole local stack (`harness up --free-ports`) for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from services.stack.layout import redis_prefix_for

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RunningStack:
    proc: subprocess.Popen
    root: Path
    env: dict[str, str]
    output: list[str]
    restarted: list[subprocess.Popen] = field(default_factory=list)  # processes a test started
    redis_url: str = ""  # what the routers share ("" = each router in memory)

    @property
    def redis_prefix(self) -> str:
        return redis_prefix_for(self.root)

    def token(self, user: str) -> str:
        return (self.root / "tokens" / f"{user}.jwt").read_text().strip()

    @property
    def triton_addrs(self) -> list[str]:
        """gRPC host:port of each Triton-protocol engine simulator (sim-0, sim-1), from .harness/env."""
        return self.env["HARNESS_TRITON_ADDRS"].split(",")

    @property
    def triton_metrics(self) -> list[str]:
        """Metrics URL of each engine simulator, in the same order."""
        return self.env["HARNESS_TRITON_METRICS"].split(",")

    @property
    def state(self) -> Path:
        return self.root / "state"

    def pids(self) -> dict[str, int]:
        try:
            lines = (self.root / "stack.pids").read_text().split("\n")
        except OSError:
            return {}
        return {name: int(pid) for name, pid in (line.split() for line in lines if line.strip())}


def prometheus_installed() -> bool:
    return shutil.which("prometheus") is not None


def read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        if key == "PATH":  # the virtualenv's bin first; a shell expands it, this reader need not
            continue
        env[key] = value.strip("'")
    return env


def kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def launch(root: Path, time_scale: float, redis_url: str = "", extra: tuple[str, ...] = ()) -> RunningStack:
    """Starts `harness up` under `root` and returns once it printed "healthy in"; fails the test
    with every child's log tail otherwise. Routers re-read budgets every 0.5 s (not 5 s)."""
    harness = Path(sys.executable).parent / "harness"
    argv = [str(harness), "up", "--free-ports", "--root", str(root), "--timeout", "90"]
    argv += ["--time-scale", str(time_scale), "--redis", redis_url, *extra]
    # Prometheus scrapes every 2 s so the monitoring tests see data soon; without it installed
    # (a developer who skipped `make install`) the stack runs without it and those tests fail
    # under CI and skip elsewhere.
    if prometheus_installed():
        argv += ["--prometheus-scrape-interval", "2"]
    else:
        argv += ["--no-prometheus"]
    proc = subprocess.Popen(
        argv,
        # Budgets re-read every 0.5 s; a lost Redis pauses budgets 5 s (requests here take < 1 s).
        env={
            **os.environ,
            "HARNESS_ROUTER_BUDGET_REFRESH_S": "0.5",
            "HARNESS_ROUTER_BUDGET_RESERVATION_TTL_S": "5",
        },
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    healthy = threading.Event()

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            output.append(line)
            if line.startswith("healthy in"):
                healthy.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 120
    while not healthy.is_set() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    stack = RunningStack(proc, root, {}, output, redis_url=redis_url)
    if not healthy.is_set():
        proc.kill()
        for pid in stack.pids().values():
            kill(pid, signal.SIGKILL)
        logs = "".join(
            f"\n--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
            for p in sorted((root / "logs").glob("*.log"))
        )
        pytest.fail("harness up did not become healthy:\n" + "".join(output) + logs)
    stack.env = read_env(root / "env")
    return stack


def shutdown(stack: RunningStack) -> None:
    """SIGTERM `harness up` (resuming it if a test paused it), then SIGKILL anything left."""
    for child in stack.restarted:
        kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    if stack.proc.poll() is None:
        stack.proc.send_signal(signal.SIGTERM)
        stack.proc.send_signal(signal.SIGCONT)
        try:
            stack.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stack.proc.kill()
    for pid in stack.pids().values():
        kill(pid, signal.SIGKILL)  # belt and braces: never leave a process behind
    if stack.redis_url:  # the stack's counters and epoch would otherwise stay in the shared Redis
        client = redis.Redis.from_url(stack.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{stack.redis_prefix}*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
