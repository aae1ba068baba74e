"""What `harness up` leaves for the user: `.harness/env` and the banner (no stack started)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from services.stack import demo_tools
from services.stack.banner import banner
from services.stack.layout import StackPaths, StackPorts
from services.stack.prometheus import banner_line
from services.stack.simulators import DEFAULT_SIMULATORS, SimulatorInstance
from services.stack.up import env_file_text

VENV_BIN = Path(sys.executable).parent


def test_sourcing_the_env_file_puts_the_virtualenvs_tools_on_path(tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text(env_file_text({"HARNESS_ADDR": "localhost:8443", "HARNESS_TOKEN": "a.b.c"}))
    script = (
        f'source "{env_file}"; command -v grpcurl; command -v harness; echo "$HARNESS_ADDR $HARNESS_TOKEN"'
    )
    # A PATH without the virtualenv, as in a fresh terminal.
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, check=True
    )
    grpcurl, harness, values = out.stdout.splitlines()
    assert Path(grpcurl) == VENV_BIN / "grpcurl" and Path(harness) == VENV_BIN / "harness"
    assert values == "localhost:8443 a.b.c"


def _banner() -> tuple[str, StackPorts]:
    ports = StackPorts()
    sims = [
        SimulatorInstance(spec, port, metrics, kv, replay)
        for spec, port, metrics, kv, replay in zip(
            DEFAULT_SIMULATORS,
            ports.enginesim,
            ports.enginesim_metrics,
            ports.enginesim_kv_events,
            ports.enginesim_kv_replay,
            strict=True,
        )
    ]
    env = {
        "HARNESS_ADDR": "localhost:8443",
        "HARNESS_OPENAI_BASE_URL": "https://localhost:8443/v1",
        "HARNESS_OPENAI_KEY_BASE_URL": "https://localhost:8444/v1",
        "HARNESS_ENVOY_ADMIN": "http://127.0.0.1:9901",
        "HARNESS_AGENT": "a",
    }
    # As `harness up` passes them: the demo's tools and Prometheus join the ports.
    extra = [demo_tools.banner_line(ports.demo_ledger), banner_line(f"http://127.0.0.1:{ports.prometheus}")]
    return banner(env, ports, StackPaths(Path(".harness")), sims, extra=extra), ports


def test_banner_lists_every_port_of_the_stack():
    text, ports = _banner()
    listed = {int(p) for p in re.findall(r":(\d{4,5})\b", text)}
    missing = [f"{what} {port}" for what, port in ports.named() if port not in listed]
    assert not missing, f"the banner does not list {missing}"
    for metrics in (*ports.router_metrics, ports.registry_metrics, ports.pool_metrics, ports.audit_metrics):
        assert f"http://127.0.0.1:{metrics}/metrics" in text


def test_banner_commands_need_no_virtualenv_prefix():
    text, _ = _banner()
    assert ".venv/bin" not in text
    assert "  harness agents list" in text and "grpcurl -plaintext" in text
