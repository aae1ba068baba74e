"""The Prometheus rules in deploy/prometheus/: valid for promtool, and every alert has a severity,
a summary, a runbook line, and promtool unit tests where it fires and where it does not."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.helpers.promtool import run_promtool

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
SEVERITIES = {"critical", "warning", "info"}


def _rule_files() -> list[Path]:
    files = sorted(RULES_DIR.glob("*.rules.yml"))
    assert files, f"no rule files in {RULES_DIR}"
    return files


def _alerts() -> list[dict]:
    return [
        rule
        for path in _rule_files()
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def test_promtool_check_rules():
    out = run_promtool("check", "rules", *map(str, _rule_files()))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_pass():
    tests = sorted((RULES_DIR / "tests").glob("*.test.yml"))
    assert tests
    out = run_promtool("test", "rules", *map(str, tests))
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_severity_summary_and_runbook():
    alerts = _alerts()
    assert len(alerts) >= 20
    for alert in alerts:
        assert alert.get("labels", {}).get("severity") in SEVERITIES, alert["alert"]
        annotations = alert.get("annotations", {})
        assert annotations.get("summary"), alert["alert"]
        assert annotations.get("runbook"), alert["alert"]


def test_every_alert_has_a_firing_and_a_silent_case():
    fires: set[str] = set()
    silent: set[str] = set()
    for path in sorted((RULES_DIR / "tests").glob("*.test.yml")):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names - fires == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested staying silent"
