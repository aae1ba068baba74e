"""`harness cost report` / `harness budget ...` without a server: parsing, USD, formats, the address."""

from __future__ import annotations

import argparse
import csv
import io
import json

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from harness.cost.v1 import cost_pb2

from services.cli.base import UsageError
from services.cli.connect import ConfigError, resolve
from services.cli.cost_client import dollars, parse_usd, usd
from services.cli.cost_cmds import (
    budget_record,
    budget_row,
    build_report_request,
    parse_dims,
    parse_percents,
    write_report,
)
from services.cli.main import build_parser, main


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def _report() -> cost_pb2.ReportResponse:
    resp = cost_pb2.ReportResponse()
    r = resp.rows.add(requests=3, input_tokens=2_000_000, output_tokens=500_000, gpu_seconds=3600,
                      cost_micro_usd=3_601_000)  # fmt: skip
    r.group.update({"agent": "ledger-bot", "model": "llama-3-8b"})
    r = resp.rows.add(requests=1, input_tokens=10, cost_micro_usd=5)
    r.group.update({"agent": "rpa, inc", "model": ""})  # a comma: CSV must quote it
    resp.total.MergeFrom(cost_pb2.ReportRow(requests=4, input_tokens=2_000_010, output_tokens=500_000,
                                            gpu_seconds=3600, cost_micro_usd=3_601_005))  # fmt: skip
    return resp


def test_usd_formatting_and_parsing():
    assert usd(3_601_000) == "3.601000" and usd(5) == "0.000005" and usd(0) == "0.000000"
    assert (
        usd(-1_500_000) == "-1.500000" and dollars(-1_500_000) == "-$1.500000" and dollars(7) == "$0.000007"
    )
    assert parse_usd("500") == 500_000_000 and parse_usd("12.5") == 12_500_000 and parse_usd("$0.000001") == 1
    for bad in ("0", "-3", "abc", "nan", "inf", "0.0000001"):
        with pytest.raises(UsageError, match="--limit-usd"):
            parse_usd(bad)


def test_dims_and_percents():
    assert parse_dims("agent, model,agent") == ["agent", "model"] and parse_dims("") == []
    with pytest.raises(UsageError, match=r"colour.*valid: user, team"):
        parse_dims("agent,colour")
    assert parse_percents("95,50,80,50") == [50, 80, 95]
    for bad in ("0", "101", "x", ","):
        with pytest.raises(UsageError, match="--soft"):
            parse_percents(bad)


def test_report_parses_and_builds_the_request():
    a = _args("cost", "report", "--by", "agent,model", "--since", "2024-05-01T00:00:00Z", "--until",
              "2024-05-08", "--format", "csv")  # fmt: skip
    assert a.handler.__name__ == "cost_report" and a.direct_addr_env == "HARNESS_COST_ADDR"
    req, dims = build_report_request(a)
    assert dims == ["agent", "model"] and list(req.group_by) == dims
    assert req.start_time.seconds == 1_714_521_600 and req.end_time.seconds == 1_714_521_600 + 7 * 86400
    req, _ = build_report_request(_args("cost", "report", "--since", "7d"))
    assert not req.HasField("end_time") and req.start_time.seconds > 0
    assert _args("cost", "report").format == "table"
    with pytest.raises(SystemExit):
        _args("cost", "report", "--format", "xml")


def test_unpriced_usage_is_shown_as_unknown_cost_not_zero(capsys):
    resp = _report()
    resp.rows[1].unpriced_requests = 1
    resp.rows[1].unpriced.append("model_input_tokens:mystery")
    resp.total.unpriced_requests = 1
    resp.total.unpriced.append("model_input_tokens:mystery")
    buf = io.StringIO()
    write_report(resp, ["agent", "model"], "table", out=buf)
    lines = buf.getvalue().splitlines()
    assert lines[0].split()[-1] == "UNPRICED" and lines[2].endswith("1 (model_input_tokens:mystery)")
    assert lines[3].split()[-1] == "1"  # the total row
    assert "1 request(s) lack a price (model_input_tokens:mystery)" in capsys.readouterr().err


def test_report_formats():
    resp, dims = _report(), ["agent", "model"]
    buf = io.StringIO()
    write_report(resp, dims, "json", out=buf)
    rows = json.loads(buf.getvalue())
    assert rows[0] == {"agent": "ledger-bot", "model": "llama-3-8b", "requests": 3, "input_tokens": 2_000_000,
                       "output_tokens": 500_000, "gpu_seconds": 3600.0, "cost_usd": 3.601,
                       "cost_micro_usd": 3_601_000, "unpriced": "", "estimated": 0}  # fmt: skip
    assert rows[1]["cost_usd"] == 0.000005 and len(rows) == 2
    buf = io.StringIO()
    write_report(resp, dims, "csv", out=buf)
    got = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert buf.getvalue().splitlines()[0] == (
        "agent,model,requests,input_tokens,output_tokens,gpu_seconds,cost_usd,cost_micro_usd,unpriced,estimated"
    )
    assert got[1]["agent"] == "rpa, inc" and got[0]["cost_usd"] == "3.601000" and len(got) == 2
    buf = io.StringIO()
    write_report(resp, dims, "table", out=buf)
    lines = buf.getvalue().splitlines()
    assert lines[0].split() == ["AGENT", "MODEL", "REQUESTS", "INPUT_TOKENS", "OUTPUT_TOKENS", "GPU_SECONDS",
                                "COST_USD"]  # fmt: skip
    assert lines[1].split() == ["ledger-bot", "llama-3-8b", "3", "2000000", "500000", "3600.0", "3.601000"]
    assert lines[3].split() == ["TOTAL", "4", "2000010", "500000", "3600.0", "3.601005"]
    buf = io.StringIO()
    write_report(cost_pb2.ReportResponse(), dims, "table", out=buf)
    assert buf.getvalue() == "(none)\n"
    buf = io.StringIO()
    write_report(cost_pb2.ReportResponse(), dims, "json", out=buf)
    assert json.loads(buf.getvalue()) == []


def test_budget_parses_and_formats():
    a = _args("budget", "set", "team-cap", "--scope", "team", "--subject", "finance", "--period", "monthly",
              "--limit-usd", "500", "--soft", "50,80")  # fmt: skip
    assert a.handler.__name__ == "budget_set" and a.scope == cost_pb2.BUDGET_SCOPE_TEAM
    assert a.period == cost_pb2.BUDGET_PERIOD_MONTHLY and a.limit_usd == "500" and a.soft == "50,80"
    assert _args("budget", "list", "--scope", "agent").scope == cost_pb2.BUDGET_SCOPE_AGENT
    assert _args("budget", "show", "team-cap").name == "team-cap"
    for bad in (["--scope", "org"], ["--period", "hourly"]):
        argv = [
            "budget",
            "set",
            "x",
            "--scope",
            "team",
            "--subject",
            "s",
            "--period",
            "daily",
            "--limit-usd",
            "1",
        ]
        argv[argv.index(bad[0]) + 1] = bad[1]
        with pytest.raises(SystemExit):
            _args(*argv)
    b = cost_pb2.Budget(name="team-cap", scope=cost_pb2.BUDGET_SCOPE_TEAM, subject="finance",
                        period=cost_pb2.BUDGET_PERIOD_MONTHLY, limit_micro_usd=500_000_000,
                        spent_micro_usd=125_000_000, alert_percent=[50, 80],
                        reset_time=Timestamp(seconds=1_717_200_000))  # fmt: skip
    rec = budget_record(b)
    assert rec["remaining_usd"] == "375.000000" and rec["used_percent"] == 25.0
    assert (
        rec["reset_time"] == "2024-06-01 00:00:00Z" and rec["scope"] == "team" and rec["period"] == "monthly"
    )
    lifetime = cost_pb2.Budget(
        name="x", limit_micro_usd=1, spent_micro_usd=3, period=cost_pb2.BUDGET_PERIOD_LIFETIME
    )
    assert budget_row(lifetime)[6:] == ["-0.000002", "300.0%", "never"]


def test_bad_values_exit_2_before_any_rpc(capsys, tmp_path):
    argv = ["budget", "set", "x", "--scope", "team", "--subject", "s", "--period", "daily", "--limit-usd", "-1",
            "--addr", "127.0.0.1:1", "--plaintext", "--root", str(tmp_path)]  # fmt: skip
    assert main(argv) == 2
    assert "--limit-usd must be > 0" in capsys.readouterr().err
    assert main(["cost", "report", "--by", "colour", "--addr", "127.0.0.1:1", "--plaintext"]) == 2


def test_cost_address(tmp_path):
    root = tmp_path / "h"
    root.mkdir()
    (root / "env").write_text("export HARNESS_ADDR='localhost:8443'\nexport HARNESS_REGISTRY_ADDR='r:1'\n")
    # Without HARNESS_COST_ADDR: through the front door, never to the registry.
    assert resolve(_args("budget", "list", "--root", str(root)), environ={}).address == "localhost:8443"
    conn = resolve(_args("cost", "report", "--root", str(root)), environ={"HARNESS_COST_ADDR": "c:50101"})
    assert conn.address == "c:50101"
    with pytest.raises(ConfigError, match=r"no cost service address.*HARNESS_COST_ADDR"):
        resolve(_args("budget", "list", "--root", str(tmp_path / "none")), environ={})


def test_a_closed_pipe_ends_the_cli_quietly():
    """`harness budget list | head`: the reader goes away; no traceback, exit 141 like a shell tool."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, services.cli.main as m\n"
        "def gone(args): raise BrokenPipeError()\n"
        "m._run_registry = gone\n"
        "sys.exit(m.main(['budget', 'list']))\n"
    )
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, timeout=60)
    assert proc.returncode == 141 and "Traceback" not in proc.stderr, proc.stderr
