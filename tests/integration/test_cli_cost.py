"""`harness cost report` and `harness budget set|list|show|delete` against a real cost service on
port 0: prices seeded, usage recorded through Record, the CLI found at HARNESS_COST_ADDR."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import timestamp_pb2
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2, cost_pb2_grpc

from services.cli.main import main
from services.cost.seed import seed_cost
from tests.helpers.cost import start_test_cost
from tests.helpers.grpc import user_metadata

PRICES = {
    "cost": {
        "prices": [
            {"kind": "model_input_tokens", "subject": "llama-3-8b", "usd": 0.20},
            {"kind": "model_output_tokens", "subject": "llama-3-8b", "usd": 0.60},
            {"kind": "gpu_hour", "subject": "H100-80GB", "usd": 2.50},
            {"kind": "tool_call", "subject": "ledger", "usd": 0.001},
        ]
    }
}


@dataclass
class Result:
    rc: int
    out: str
    err: str


def usage(event_id: str, agent: str, *, model="llama-3-8b", inp=0, out=0, gpu=0.0, tool=""):
    t = timestamp_pb2.Timestamp()
    t.GetCurrentTime()
    return common_pb2.UsageEvent(
        event_id=event_id, time=t, model=model, gpu_type="H100-80GB", tool=tool,
        actor=common_pb2.Actor(user="alice", team="finance", project="ledger", agent=agent),
        usage=common_pb2.Usage(input_tokens=inp, output_tokens=out, gpu_seconds=gpu),
    )  # fmt: skip


def events() -> list[common_pb2.UsageEvent]:
    """Dated now, so after the prices (seeded effective now) are in force."""
    return [
        usage("e1", "ledger-bot", inp=1_000_000, out=500_000),  # 0.20 + 0.30
        usage("e2", "ledger-bot", gpu=3600),  # 2.50
        usage("e3", "rpa-bot", inp=1_000_000),  # 0.20
        usage("e4", "rpa-bot", model="", tool="ledger"),  # 0.001
    ]


@pytest.fixture
async def cost(tmp_path, test_auth, mint_token):
    running = await start_test_cost(tmp_path, test_auth)
    admin = user_metadata(mint_token("svc", "admin"))
    async with grpc.aio.insecure_channel(running.address) as ch:
        stub = cost_pb2_grpc.CostStub(ch)
        await seed_cost(stub, PRICES, admin)

        assert (await stub.Record(cost_pb2.RecordRequest(events=events()), metadata=admin)).accepted == 4
    yield running
    await running.stop(0)


@pytest.fixture
def cli(cost, tmp_path, capsys, monkeypatch, mint_token):
    root = tmp_path / "harness"
    (root / "tokens").mkdir(parents=True)
    # The registry address is there too: cost commands must not use it.
    (root / "env").write_text(
        f"export HARNESS_COST_ADDR='{cost.address}'\nexport HARNESS_REGISTRY_ADDR='127.0.0.1:1'\n"
        "export HARNESS_PLAINTEXT='1'\n"
    )
    for name, roles in {"ann": ("admin",), "fiona": ("finance",), "dave": ("analyst",)}.items():
        (root / "tokens" / f"{name}.jwt").write_text(mint_token(name, *roles))
    for name in ("HARNESS_ADDR", "HARNESS_COST_ADDR", "HARNESS_REGISTRY_ADDR", "HARNESS_TOKEN", "HARNESS_CA"):
        monkeypatch.delenv(name, raising=False)

    async def run(*argv: str, user: str = "fiona") -> Result:
        capsys.readouterr()
        rc = await asyncio.to_thread(main, [*argv, "--root", str(root), "--user", user])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return Result(rc, out, err)

    return run


async def test_report_in_three_formats(cli):
    by = ("cost", "report", "--by", "agent,model", "--since", "1h")
    res = await cli(*by, "--format", "json")
    assert res.rc == 0, res.err
    rows = json.loads(res.out)
    assert [(r["agent"], r["model"], r["requests"], r["cost_micro_usd"], r["cost_usd"]) for r in rows] == [
        ("ledger-bot", "llama-3-8b", 2, 3_000_000, 3.0),
        ("rpa-bot", "llama-3-8b", 1, 200_000, 0.2),
        ("rpa-bot", "", 1, 1_000, 0.001),
    ]
    assert rows[0]["input_tokens"] == 1_000_000 and rows[0]["gpu_seconds"] == 3600.0

    res = await cli(*by, "--format", "csv")
    assert res.rc == 0, res.err
    assert res.out.splitlines()[0] == (
        "agent,model,requests,input_tokens,output_tokens,gpu_seconds,cost_usd,cost_micro_usd,unpriced,estimated"
    )
    got = list(csv.DictReader(io.StringIO(res.out)))
    assert [(r["agent"], r["model"], r["cost_usd"]) for r in got] == [
        ("ledger-bot", "llama-3-8b", "3.000000"),
        ("rpa-bot", "llama-3-8b", "0.200000"),
        ("rpa-bot", "", "0.001000"),
    ]

    res = await cli(*by)
    assert res.rc == 0, res.err
    lines = res.out.splitlines()
    assert lines[0].split()[:2] == ["AGENT", "MODEL"] and lines[0].split()[-1] == "COST_USD"
    assert lines[1].split()[0] == "ledger-bot" and lines[1].split()[-1] == "3.000000"
    assert lines[-1].split() == ["TOTAL", "4", "2000000", "500000", "3600.0", "3.201000"]

    # --json picks JSON when no --format is given; a window before the usage is empty.
    assert (
        len(json.loads((await cli("cost", "report", "--by", "project", "--since", "1h", "--json")).out)) == 1
    )
    res = await cli("cost", "report", "--since", "3h", "--until", "2h", "--format", "json")
    assert res.rc == 0 and json.loads(res.out) == []
    denied = await cli(*by, user="dave")
    assert (
        denied.rc == 1 and denied.err.startswith("harness: PERMISSION_DENIED: ") and "finance" in denied.err
    )


async def test_budget_set_list_show_delete(cli):
    res = await cli("budget", "set", "rpa-daily", "--scope", "agent", "--subject", "rpa-bot", "--period", "daily",
                    "--limit-usd", "1.5", "--soft", "50,90", user="ann")  # fmt: skip
    assert res.rc == 0, res.err
    assert "limit:" in res.out and "$1.500000" in res.out and "$0.201000" in res.out
    res = await cli("budget", "set", "ledger-life", "--scope", "project", "--subject", "ledger", "--period",
                    "lifetime", "--limit-usd", "3", user="ann")  # fmt: skip
    assert res.rc == 0, res.err

    res = await cli("budget", "show", "rpa-daily", "--json")
    b = json.loads(res.out)["budget"]
    assert (
        b["spent_micro_usd"] == "201000"
        and b["limit_micro_usd"] == "1500000"
        and b["alert_percent"] == [50, 90]
    )
    assert b["reset_time"]  # daily: resets at the next midnight
    res = await cli("budget", "show", "rpa-daily")
    fields = dict(line.split(":", 1) for line in res.out.splitlines())
    assert fields["remaining"].strip() == "$1.299000" and fields["scope"].strip() == "agent rpa-bot"
    assert "13.4%" in fields["spent"] and fields["soft alerts"].strip() == "50%, 90%"
    assert fields["resets"].strip().endswith("00:00:00Z")
    res = await cli("budget", "show", "ledger-life")
    fields = {k: v.strip() for k, v in (line.split(":", 1) for line in res.out.splitlines())}
    assert fields["remaining"] == "-$0.201000 (over the limit)" and fields["resets"] == "never (lifetime)"

    res = await cli("budget", "list")
    assert res.rc == 0, res.err
    lines = res.out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "SCOPE", "SUBJECT"]
    assert lines[1].split() == ["ledger-life", "project", "ledger", "lifetime", "3.000000", "3.201000",
                                "-0.201000", "106.7%", "never"]  # fmt: skip
    assert lines[2].split()[:7] == [
        "rpa-daily",
        "agent",
        "rpa-bot",
        "daily",
        "1.500000",
        "0.201000",
        "1.299000",
    ]
    only = json.loads((await cli("budget", "list", "--scope", "agent", "--json")).out)
    assert [x["name"] for x in only["budgets"]] == ["rpa-daily"]

    # Errors: CODE: message on stderr, exit 1.
    res = await cli("budget", "show", "nope")
    assert res.rc == 1 and res.err.startswith("harness: NOT_FOUND: ") and "nope" in res.err
    res = await cli("budget", "set", "x", "--scope", "team", "--subject", "t", "--period", "daily",
                    "--limit-usd", "1", "--webhook", "ftp://x", user="ann")  # fmt: skip
    assert res.rc == 1 and "INVALID_ARGUMENT" in res.err and "webhook_url" in res.err
    # finance may read budgets, not set them
    res = await cli("budget", "set", "x", "--scope", "team", "--subject", "t", "--period", "daily",
                    "--limit-usd", "1")  # fmt: skip
    assert res.rc == 1 and "PERMISSION_DENIED" in res.err
    assert (await cli("budget", "delete", "rpa-daily", user="ann")).rc == 0
    assert "NOT_FOUND" in (await cli("budget", "show", "rpa-daily")).err


async def test_price_list_and_set_versions(cli):
    res = await cli("price", "list")
    assert res.rc == 0, res.err
    lines = res.out.splitlines()
    assert lines[0].split() == ["KIND", "SUBJECT", "USD", "PER", "EFFECTIVE"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["model_input_tokens", "llama-3-8b", "0.200000"],
        ["model_output_tokens", "llama-3-8b", "0.600000"],
        ["gpu_hour", "H100-80GB", "2.500000"],
        ["tool_call", "ledger", "0.001000"],
    ]
    # A price cut from a future date: now still the old price, at that date the new one.
    res = await cli("price", "set", "model_output_tokens", "llama-3-8b", "--usd", "0.45",
                    "--effective", "2099-01-01T00:00:00", user="ann")  # fmt: skip
    assert res.rc == 0, res.err
    assert res.out.splitlines()[1].split() == [
        "model_output_tokens",
        "llama-3-8b",
        "0.450000",
        "1M",
        "output",
        "tokens",
        "2099-01-01T00:00:00Z",
    ]
    now = json.loads((await cli("price", "list", "--kind", "model_output_tokens", "--json")).out)
    assert [p["micro_usd"] for p in now["prices"]] == ["600000"]
    later = await cli("price", "list", "--kind", "model_output_tokens", "--at", "2099-06-01T00:00:00")
    assert [line.split()[2] for line in later.out.splitlines()[1:]] == ["0.450000"]
    every = await cli("price", "list", "--all", "--kind", "model_output_tokens")
    assert [line.split()[2] for line in every.out.splitlines()[1:]] == ["0.600000", "0.450000"]
    # A free tool is a price of 0; a negative one never reaches the service.
    assert (await cli("price", "set", "tool_call", "search", "--usd", "0", user="ann")).rc == 0
    res = await cli("price", "set", "tool_call", "search", "--usd", "-1", user="ann")
    assert res.rc == 2 and "--usd must be >= 0" in res.err
    res = await cli("price", "set", "tool_call", "search", "--usd", "0.1")  # finance may read, not set
    assert res.rc == 1 and res.err.startswith("harness: PERMISSION_DENIED: ")
