"""The Prometheus config `harness up` renders: every metrics endpoint of the stack, valid for
promtool, and a refused scrape interval or a missing binary said before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.stack import prometheus as prom
from services.stack.layout import StackPorts
from services.stack.up import Stack, StackError, UpConfig
from tests.helpers.promtool import run_promtool


def test_every_service_router_engine_and_envoy_is_a_target():
    ports = StackPorts()
    jobs = {j.name: j for j in prom.stack_jobs(ports, [("sim-0", 8002), ("sim-1", 8012)])}
    assert set(jobs) == {"router", "registry", "pool", "audit", "cost", "engine", "envoy"}
    assert jobs["router"].targets == ("127.0.0.1:9461", "127.0.0.1:9462")
    assert jobs["engine"].static_configs() == [
        {"targets": ["127.0.0.1:8002"], "labels": {"endpoint": "sim-0"}},
        {"targets": ["127.0.0.1:8012"], "labels": {"endpoint": "sim-1"}},
    ]
    assert jobs["envoy"].targets == ("127.0.0.1:9901",) and jobs["envoy"].path == "/stats/prometheus"


def test_rendered_config_passes_promtool_with_the_rules(tmp_path: Path):
    config = prom.render_config(prom.stack_jobs(StackPorts(), [("sim-0", 8002)]), 2.0)
    assert config["rule_files"] == [str(prom.RULES_DIR / "*.rules.yml")]
    path = tmp_path / "prometheus.yml"
    prom.write_config(config, path)
    out = run_promtool("check", "config", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


@pytest.mark.parametrize("seconds", [0.5, 61.0])
def test_scrape_interval_out_of_range_is_refused_before_start(tmp_path: Path, seconds: float):
    cfg = UpConfig(root=tmp_path / "h", ports=StackPorts.free(), prometheus_scrape_s=seconds)
    with pytest.raises(StackError, match="scrape-interval must be 1 to 60 seconds"):
        Stack(cfg).start()
    assert not (tmp_path / "h").exists(), "nothing started or written"


def test_missing_prometheus_names_the_fix(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(prom.shutil, "which", lambda _name: None)
    with pytest.raises(StackError, match=r"make install.*--no-prometheus"):
        Stack(UpConfig(root=tmp_path / "h", ports=StackPorts.free())).start()


def test_no_prometheus_ignores_a_busy_prometheus_port(tmp_path: Path, monkeypatch):
    """--no-prometheus: a Prometheus of the user's own on :9090 does not stop the stack."""
    ports = StackPorts.free()
    monkeypatch.setattr(
        "services.stack.up.ports_in_use", lambda _p: [f"port {ports.prometheus} (prometheus)"]
    )
    monkeypatch.setattr(
        Stack, "_start_children", lambda self: (_ for _ in ()).throw(RuntimeError("got past"))
    )
    cfg = UpConfig(root=tmp_path / "h", ports=ports, prometheus=False)
    with pytest.raises(RuntimeError, match="got past"):
        Stack(cfg).start()
    with pytest.raises(StackError, match=r"\(prometheus\) already in use.*--no-prometheus"):
        Stack(UpConfig(root=tmp_path / "h2", ports=ports)).start()
