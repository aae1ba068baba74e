"""`harness cost advise`: the cost advisor's recommendations (Cost.Advise) and what limited them.

Registered under `harness cost` by cost_cmds.register, and reaches the cost service the same way
(HARNESS_COST_ADDR with the ops certificate, else Envoy). Reading advice needs the admin or
finance role. Savings are estimates per month; recommendations can overlap (consolidating and
quantizing the same deployments), so the CLI does not add them up.
"""

from __future__ import annotations

import argparse
import json
import sys

from harness.cost.v1 import cost_pb2

from services.cli import output
from services.cli.base import Ctx, UsageError
from services.cli.cost_client import stub

ADVISE_FORMATS = ("table", "json")
GIB = 1 << 30
MAX_PERIOD_DAYS = 366  # the service's limit (services/cost/advisor/facts.py)


def saving_usd(micro: int) -> str:
    """Monthly estimates in whole cents: 3013325834 -> "3013.33"."""
    return f"{micro / 1_000_000:.2f}"


def vram_gib(n_bytes: int) -> str:
    return f"{n_bytes / GIB:.1f}"


def parse_rules(values: list[str] | None) -> list[str]:
    """`--rule a --rule b,c` -> ["a", "b", "c"] (the service names unknown ones)."""
    return list(dict.fromkeys(r.strip() for v in values or () for r in v.split(",") if r.strip()))


def build_advise_request(args: argparse.Namespace) -> cost_pb2.AdviseRequest:
    if not 0 <= args.period_days <= MAX_PERIOD_DAYS:
        raise UsageError(f"--period-days must be in 0..{MAX_PERIOD_DAYS} (0 = the service default, 30)")
    return cost_pb2.AdviseRequest(
        project=args.project or "", period_days=args.period_days, rules=parse_rules(args.rule)
    )


def advice_record(resp: cost_pb2.AdviseResponse) -> dict:
    """Recommendations (largest saving first, as the service ranks them) and notes, for JSON."""
    recs = [
        {
            "rule": r.rule, "title": r.title,
            "monthly_saving_usd": float(saving_usd(r.monthly_saving_micro_usd)),
            "monthly_saving_micro_usd": r.monthly_saving_micro_usd,
            "vram_saved_gib": round(r.vram_saved_bytes / GIB, 3), "vram_saved_bytes": r.vram_saved_bytes,
            "action": r.action, "evidence": r.evidence,
        }
        for r in resp.recommendations
    ]  # fmt: skip
    return {"recommendations": recs, "notes": list(resp.notes)}


def write_advice(resp: cost_pb2.AdviseResponse, fmt: str, out=None) -> None:
    out = out or sys.stdout
    if fmt == "json":
        print(json.dumps(advice_record(resp), indent=2), file=out)
        return
    recs = list(resp.recommendations)
    rows = [[i, r.rule, saving_usd(r.monthly_saving_micro_usd), vram_gib(r.vram_saved_bytes), r.title]
            for i, r in enumerate(recs, 1)]  # fmt: skip
    output.table(["#", "RULE", "SAVING_USD_MONTH", "VRAM_GIB", "TITLE"], rows, out=out)
    for i, r in enumerate(recs, 1):
        print(file=out)
        print(f"{i}. {r.title}", file=out)
        output.fields(
            [
                ("rule", r.rule),
                ("saving", f"${saving_usd(r.monthly_saving_micro_usd)}/month (estimate)"),
                ("vram freed", f"{vram_gib(r.vram_saved_bytes)} GiB"),
                ("action", r.action),
                ("evidence", r.evidence),
            ],
            out=out,
        )
    if resp.notes:
        print("\nnotes:", file=out)
        for n in resp.notes:
            print(f"  - {n}", file=out)


def cost_advise(ctx: Ctx, args: argparse.Namespace) -> int:
    """Advisor rules over the last --period-days of the ledger (and the live fleet, when the cost
    service has one)."""
    req = build_advise_request(args)
    fmt = "json" if ctx.json and args.format == "table" else args.format
    write_advice(stub(ctx).Advise(req, metadata=ctx.conn.metadata(), timeout=ctx.conn.timeout_s), fmt)
    sys.stdout.flush()
    return 0


def add_advise(verbs: argparse._SubParsersAction, common: argparse.ArgumentParser, defaults: dict) -> None:
    """Adds `advise` to `harness cost`."""
    p = verbs.add_parser(
        "advise", parents=[common], help="cost-saving recommendations from the ledger and fleet"
    )
    p.add_argument("--project", default="", help="only this project's usage (default: all)")
    p.add_argument(
        "--period-days", type=int, default=0, help="days of ledger history, ending now (default 30)"
    )
    p.add_argument("--rule", action="append", metavar="RULE",
                   help="only this rule (repeatable or comma-separated): consolidate, quantize, scale_to_zero, "
                        "smaller_model, cut_max_tokens")  # fmt: skip
    p.add_argument("--format", choices=ADVISE_FORMATS, default="table", help="table (default) or json")
    p.set_defaults(handler=cost_advise, **defaults)
