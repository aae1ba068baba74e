"""The Grafana dashboards and their provisioning (tests/e2e/test_monitoring.py runs every panel's
query against a live stack)."""

from __future__ import annotations

import yaml

from tests.e2e.dashboards import DASHBOARDS, dashboards

GRAFANA = DASHBOARDS.parent
EXPECTED = {"fleet-overview", "agent", "gpu-pool", "cost-budgets", "security"}


def test_each_dashboard_has_a_unique_uid_and_described_panels_on_the_provisioned_datasource():
    boards = dashboards()
    assert set(boards) == EXPECTED
    assert len({b["uid"] for b in boards.values()}) == len(boards)
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    for name, board in boards.items():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in board["panels"]:
            assert panel["title"] and panel["description"], (name, panel.get("title"))
            assert panel["datasource"]["uid"] == source["uid"], (name, panel["title"])
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), (
                name,
                panel["title"],
            )
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, (name, panel["title"])


def test_compose_provisions_prometheus_grafana_and_the_dashboards():
    compose = yaml.safe_load((GRAFANA.parents[1] / "compose" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"prometheus", "grafana"} <= set(services)
    grafana_mounts = " ".join(services["grafana"]["volumes"])
    assert "deploy/grafana/provisioning" in grafana_mounts and "deploy/grafana/dashboards" in grafana_mounts
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "harness.yml").read_text())
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert any(m.endswith(f":{dashboards_path}:ro") for m in services["grafana"]["volumes"])
    prom_mounts = " ".join(services["prometheus"]["volumes"])
    assert "deploy/prometheus" in prom_mounts and "prometheus.yml" in prom_mounts


def test_compose_prometheus_scrapes_the_same_jobs_as_harness_up():
    config = yaml.safe_load((GRAFANA.parents[1] / "compose" / "prometheus.yml").read_text())
    jobs = {j["job_name"] for j in config["scrape_configs"]}
    assert jobs == {"router", "registry", "pool", "audit", "cost", "engine", "envoy"}
    assert config["rule_files"] == ["/etc/prometheus/rules/*.rules.yml"]


def test_compose_prometheus_config_passes_promtool():
    from tests.helpers.promtool import run_promtool

    out = run_promtool("check", "config", str(GRAFANA.parents[1] / "compose" / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
