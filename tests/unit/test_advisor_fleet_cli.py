"""`harness cost advise` without a server: flags, the request, table and JSON output."""

from __future__ import annotations

import io
import json

import pytest
from harness.cost.v1 import cost_pb2

from services.cli.advise_cmds import build_advise_request, parse_rules, write_advice
from services.cli.base import UsageError
from services.cli.main import build_parser

GIB = 1 << 30


def _response() -> cost_pb2.AdviseResponse:
    return cost_pb2.AdviseResponse(
        recommendations=[
            cost_pb2.Recommendation(rule="consolidate", title="Consolidate 5 agents on one llama-3-8b deployment",
                                    action="Serve a, b from d0 and remove d1", evidence="5 deployments ...",
                                    monthly_saving_micro_usd=3_013_325_834, vram_saved_bytes=132 * GIB),
            cost_pb2.Recommendation(rule="cut_max_tokens", title="Cut a's max_tokens from 1024 to 400",
                                    action="Set max_tokens 400", evidence="a: 120 requests"),
        ],
        notes=["fleet: the registry at 127.0.0.1:1 did not answer ListModels (UNAVAILABLE: x): ..."],
    )  # fmt: skip


def test_flags_become_the_request():
    args = build_parser().parse_args(
        ["cost", "advise", "--project", "ledger", "--period-days", "7", "--rule", "quantize",
         "--rule", "consolidate, quantize,scale_to_zero"]
    )  # fmt: skip
    req = build_advise_request(args)
    assert (req.project, req.period_days, list(req.rules)) == (
        "ledger",
        7,
        ["quantize", "consolidate", "scale_to_zero"],
    )
    args = build_parser().parse_args(["cost", "advise"])
    assert build_advise_request(args) == cost_pb2.AdviseRequest() and args.format == "table"
    assert parse_rules(None) == [] and parse_rules([" , "]) == []
    with pytest.raises(UsageError, match="--period-days"):
        build_advise_request(build_parser().parse_args(["cost", "advise", "--period-days", "-1"]))


def test_table_shows_each_recommendation_and_the_notes():
    out = io.StringIO()
    write_advice(_response(), "table", out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["#", "RULE", "SAVING_USD_MONTH", "VRAM_GIB", "TITLE"]
    assert lines[1].split()[:4] == ["1", "consolidate", "3013.33", "132.0"]
    assert lines[2].split()[:4] == ["2", "cut_max_tokens", "0.00", "0.0"]
    text = out.getvalue()
    assert "1. Consolidate 5 agents on one llama-3-8b deployment" in lines
    assert "saving:     $3013.33/month (estimate)" in text and "vram freed: 132.0 GiB" in text
    assert "action:     Serve a, b from d0 and remove d1" in text
    assert lines[-2:] == [
        "notes:",
        "  - fleet: the registry at 127.0.0.1:1 did not answer ListModels (UNAVAILABLE: x): ...",
    ]

    out = io.StringIO()
    write_advice(cost_pb2.AdviseResponse(), "table", out)
    assert out.getvalue() == "(none)\n"


def test_json_keeps_exact_figures():
    out = io.StringIO()
    write_advice(_response(), "json", out)
    data = json.loads(out.getvalue())
    first = data["recommendations"][0]
    assert first["monthly_saving_usd"] == 3013.33 and first["monthly_saving_micro_usd"] == 3_013_325_834
    assert first["vram_saved_gib"] == 132.0 and first["vram_saved_bytes"] == 132 * GIB
    assert first["evidence"] == "5 deployments ..." and first["rule"] == "consolidate"
    assert data["notes"][0].startswith("fleet: the registry")
