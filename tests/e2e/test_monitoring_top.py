"""`harness top --once` against the running demo stack, while traffic flows: one frame that fits
80x24 and shows every demo agent, both simulators, the demo budget and the approvals line."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest

from tests.e2e.stack import REPO
from tests.e2e.traffic import AGENTS, demo_traffic

pytestmark = pytest.mark.e2e


def test_top_once_shows_the_fleet_in_80_by_24(stack):
    done = threading.Event()

    def traffic() -> None:
        while not done.is_set():
            asyncio.run(demo_traffic(stack, per_agent=2))

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        time.sleep(1)
        out = subprocess.run(
            [sys.executable, "-m", "services.cli.main", "top", "--once", "--interval", "3", "--width", "80",
             "--root", str(stack.root)],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )  # fmt: skip
    finally:
        done.set()
        worker.join(timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.rstrip("\n").split("\n")
    assert len(lines) <= 24 and max(map(len, lines)) <= 80, out.stdout
    rows = {line.split()[0]: line.split() for line in lines if line.split()}
    for agent in AGENTS:
        assert agent in rows, out.stdout
    assert any(float(rows[a][2]) > 0 for a in AGENTS), "requests/s while traffic flows:\n" + out.stdout
    assert rows["risk-agent"][1] == "realtime" and rows["risk-agent"][5] == "100ms"  # its SLO target
    for endpoint in ("sim-0", "sim-1"):
        assert rows[endpoint][1] == "ok", out.stdout
    assert rows["sim-0"][5].startswith("llama-3-8b-instruct"), out.stdout  # its loaded models
    assert rows["ledger-monthly"][-1].endswith("d"), out.stdout  # resets in N days
    assert "Approvals pending: " in out.stdout
    assert "UNAVAILABLE" not in out.stdout and "PERMISSION_DENIED" not in out.stdout, out.stdout
