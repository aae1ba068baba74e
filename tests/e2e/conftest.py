"""Starts the whole local stack once (`harness up --free-ports`) for the end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RunningStack:
    proc: subprocess.Popen
    root: Path
    env: dict[str, str]
    output: list[str]

    def token(self, user: str) -> str:
        return (self.root / "tokens" / f"{user}.jwt").read_text().strip()

    @property
    def triton_addrs(self) -> list[str]:
        """gRPC host:port of each engine simulator (sim-0, sim-1), from .harness/env."""
        return self.env["HARNESS_TRITON_ADDRS"].split(",")

    @property
    def triton_metrics(self) -> list[str]:
        """Metrics URL of each engine simulator, in the same order."""
        return self.env["HARNESS_TRITON_METRICS"].split(",")

    def pids(self) -> dict[str, int]:
        lines = (self.root / "stack.pids").read_text().split("\n")
        return {name: int(pid) for name, pid in (line.split() for line in lines if line.strip())}


def _read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.strip("'")
    return env


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> RunningStack:
    root = tmp_path_factory.mktemp("stack") / ".harness"
    harness = Path(sys.executable).parent / "harness"
    proc = subprocess.Popen(
        [str(harness), "up", "--free-ports", "--root", str(root), "--timeout", "90", "--time-scale", "10"],
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
    if not healthy.is_set():
        proc.kill()
        logs = "".join(
            f"\n--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
            for p in sorted((root / "logs").glob("*.log"))
        )
        pytest.fail("harness up did not become healthy:\n" + "".join(output) + logs)
    running = RunningStack(proc, root, _read_env(root / "env"), output)
    yield running
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    for pid in running.pids().values():
        try:
            os.kill(pid, signal.SIGKILL)  # belt and braces: never leave a process behind
        except ProcessLookupError:
            pass
