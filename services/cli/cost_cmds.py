"""`harness cost report` and `harness budget set|list|show|delete|alerts`: spend and budgets
(`harness cost advise` in advise_cmds.py, `harness price list|set` in price_cmds.py).

These talk to the cost service: directly at HARNESS_COST_ADDR (with the ops certificate, as the
registry commands do at HARNESS_REGISTRY_ADDR), else through Envoy's front door (HARNESS_ADDR).
Reading needs a user with the admin or finance role; setting and deleting budgets needs admin.
The service keeps money in integer micro-USD; the CLI shows and takes USD.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys

from harness.cost.v1 import cost_pb2

from services.cli import output
from services.cli.advise_cmds import add_advise
from services.cli.audit_cmds import parse_time
from services.cli.base import Ctx, UsageError, enum_arg
from services.cli.cost_client import _call, dollars, parse_usd, usd
from services.cli.price_cmds import add_prices

DIRECT_ADDR_ENV = "HARNESS_COST_ADDR"
# Report dimensions the service accepts (services/cost/reports.py DIMENSIONS).
DIMENSIONS = ("user", "team", "project", "agent", "agent_version", "model", "deployment", "tool", "day")
REPORT_FORMATS = ("table", "json", "csv")
MEASURES = (
    "requests",
    "input_tokens",
    "output_tokens",
    "gpu_seconds",
    "cost_usd",
    "cost_micro_usd",
    "unpriced",
    "estimated",
)
SCOPE = enum_arg(cost_pb2.BudgetScope)
PERIOD = enum_arg(cost_pb2.BudgetPeriod)


def parse_dims(text: str) -> list[str]:
    """ "agent,model" -> ["agent", "model"]; unknown names are a usage error listing the valid ones."""
    dims = [d.strip() for d in text.split(",") if d.strip()]
    unknown = [d for d in dims if d not in DIMENSIONS]
    if unknown:
        raise UsageError(f"--by: unknown dimension(s) {', '.join(unknown)}; valid: {', '.join(DIMENSIONS)}")
    return list(dict.fromkeys(dims))


def parse_percents(text: str) -> list[int]:
    """ "50,80,95" -> [50, 80, 95]; each in 1..100."""
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"--soft must be comma-separated whole percentages, got {text!r}") from None
    if not values or any(p <= 0 or p > 100 for p in values):
        raise UsageError(f"--soft percentages must be in 1..100, got {text!r}")
    return sorted(set(values))


# ---- report ----


def report_records(resp: cost_pb2.ReportResponse, dims: list[str]) -> list[dict]:
    """One flat dict per row: the group-by dimensions, then the measures (cost in USD and micro-USD)."""
    out = []
    for r in resp.rows:
        rec: dict = {d: r.group.get(d, "") for d in dims}
        rec.update(
            requests=r.requests, input_tokens=r.input_tokens, output_tokens=r.output_tokens,
            gpu_seconds=r.gpu_seconds, cost_usd=usd(r.cost_micro_usd), cost_micro_usd=r.cost_micro_usd,
            unpriced=f"{r.unpriced_requests} ({', '.join(r.unpriced)})" if r.unpriced_requests else "",
            estimated=r.estimated_requests,
        )  # fmt: skip
        out.append(rec)
    return out


def write_report(resp: cost_pb2.ReportResponse, dims: list[str], fmt: str, out=None) -> None:
    out = out or sys.stdout
    records = report_records(resp, dims)
    if fmt == "json":
        # cost_usd as a JSON number; cost_micro_usd is the exact integer the service keeps.
        print(json.dumps([{**r, "cost_usd": float(r["cost_usd"])} for r in records], indent=2), file=out)
    elif fmt == "csv":
        w = csv.DictWriter(out, fieldnames=[*dims, *MEASURES], lineterminator="\n")
        w.writeheader()
        w.writerows(records)
    else:
        headers = [*(d.upper() for d in dims), "REQUESTS", "INPUT_TOKENS", "OUTPUT_TOKENS", "GPU_SECONDS",
                   "COST_USD"]  # fmt: skip
        rows = [[*(rec[d] for d in dims), rec["requests"], rec["input_tokens"], rec["output_tokens"],
                 f"{rec['gpu_seconds']:.1f}", rec["cost_usd"]] for rec in records]  # fmt: skip
        t = resp.total
        if rows:
            label = ["TOTAL", *([""] * (len(dims) - 1))] if dims else []
            rows.append([*label, t.requests, t.input_tokens, t.output_tokens, f"{t.gpu_seconds:.1f}",
                         usd(t.cost_micro_usd)])  # fmt: skip
        if t.unpriced_requests:  # unknown cost is not zero cost: say so beside the figures
            headers.append("UNPRICED")
            for row, rec in zip(rows, [*records, {"unpriced": str(t.unpriced_requests)}], strict=True):
                row.append(rec["unpriced"])
        output.table(headers, rows, out=out)
        if t.unpriced_requests:
            print(f"note: {t.unpriced_requests} request(s) lack a price ({', '.join(t.unpriced)}); their "
                  "cost is unknown and not in COST_USD: set it with `harness price set KIND SUBJECT --usd X`", file=sys.stderr)  # fmt: skip
        if t.estimated_requests:
            print(f"note: {t.estimated_requests} request(s) were billed on token counts estimated from the text "
                  "(their engine reported none)", file=sys.stderr)  # fmt: skip


def build_report_request(args: argparse.Namespace) -> tuple[cost_pb2.ReportRequest, list[str]]:
    dims = parse_dims(args.by or "")
    req = cost_pb2.ReportRequest(group_by=dims, start_time=parse_time(args.since))
    if args.until:
        req.end_time.CopyFrom(parse_time(args.until))
    return req, dims


def cost_report(ctx: Ctx, args: argparse.Namespace) -> int:
    """Ledger totals over [--since, --until) grouped by --by, largest cost first."""
    req, dims = build_report_request(args)
    fmt = "json" if ctx.json and args.format == "table" else args.format
    resp = _call(ctx, "Report", req)
    write_report(resp, dims, fmt)
    sys.stdout.flush()
    return 0


# ---- budgets ----


def budget_record(b: cost_pb2.Budget) -> dict:
    """A budget in USD with its spend in the current period, what remains and when it resets."""
    remaining = b.limit_micro_usd - b.spent_micro_usd
    used = 100.0 * b.spent_micro_usd / b.limit_micro_usd if b.limit_micro_usd else 0.0
    return {
        "name": b.name,
        "scope": output.enum_short(cost_pb2.BudgetScope, b.scope),
        "subject": b.subject,
        "period": output.enum_short(cost_pb2.BudgetPeriod, b.period),
        "limit_usd": usd(b.limit_micro_usd),
        "spent_usd": usd(b.spent_micro_usd),
        "remaining_usd": usd(remaining),
        "used_percent": round(used, 2),
        "soft_percent": list(b.alert_percent),
        "webhook_url": b.webhook_url,
        "reset_time": output.when(b.reset_time) if b.HasField("reset_time") else "",
    }


BUDGET_HEADERS = ("NAME", "SCOPE", "SUBJECT", "PERIOD", "LIMIT_USD", "SPENT_USD", "REMAINING_USD", "USED",
                  "RESETS")  # fmt: skip


def budget_row(b: cost_pb2.Budget) -> list[object]:
    r = budget_record(b)
    return [r["name"], r["scope"], r["subject"], r["period"], r["limit_usd"], r["spent_usd"],
            r["remaining_usd"], f"{r['used_percent']:.1f}%", r["reset_time"] or "never"]  # fmt: skip


def _print_budget(b: cost_pb2.Budget) -> None:
    r = budget_record(b)
    remaining = b.limit_micro_usd - b.spent_micro_usd
    output.fields(
        [
            ("name", r["name"]),
            ("scope", f"{r['scope']} {r['subject']}"),
            ("period", r["period"]),
            ("limit", dollars(b.limit_micro_usd)),
            ("spent", f"{dollars(b.spent_micro_usd)} ({r['used_percent']:.1f}% of the limit, this period)"),
            ("remaining", dollars(remaining) + (" (over the limit)" if remaining < 0 else "")),
            ("resets", r["reset_time"] or "never (lifetime)"),
            ("soft alerts", ", ".join(f"{p}%" for p in r["soft_percent"])),
            ("webhook", r["webhook_url"]),
        ]
    )


def budget_set(ctx: Ctx, args: argparse.Namespace) -> int:
    """Creates or replaces a budget by name (SetBudget), then prints it with its current spend."""
    budget = cost_pb2.Budget(
        name=args.name, scope=args.scope, subject=args.subject, period=args.period,
        limit_micro_usd=parse_usd(args.limit_usd), alert_percent=parse_percents(args.soft) if args.soft else [],
        webhook_url=args.webhook or "",
    )  # fmt: skip
    resp = _call(ctx, "SetBudget", cost_pb2.SetBudgetRequest(budget=budget))
    return ctx.emit(resp, lambda r: _print_budget(r.budget))


def budget_list(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = _call(ctx, "ListBudgets", cost_pb2.ListBudgetsRequest(scope=args.scope or 0))
    return ctx.emit(resp, lambda r: output.table(BUDGET_HEADERS, [budget_row(b) for b in r.budgets]))


def budget_show(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = _call(ctx, "GetBudget", cost_pb2.GetBudgetRequest(name=args.name))
    return ctx.emit(resp, lambda r: _print_budget(r.budget))


def budget_delete(ctx: Ctx, args: argparse.Namespace) -> int:
    _call(ctx, "DeleteBudget", cost_pb2.DeleteBudgetRequest(name=args.name))
    if not ctx.json:
        print(f"deleted budget {args.name}")
    return 0


# ---- budget alerts ----

ALERT_FORMATS = ("table", "json")
ALERT_HEADERS = ("TIME", "BUDGET", "PERCENT", "SPENT_USD", "LIMIT_USD", "PERIOD_START", "AUDIT", "WEBHOOK")


def alert_record(a: cost_pb2.Alert) -> dict:
    """One alert, flat: money in USD and exact micro-USD, times as `YYYY-MM-DD HH:MM:SSZ`."""
    w = a.webhook
    return {
        "id": a.id, "time": output.when(a.time), "budget": a.budget,
        "scope": output.enum_short(cost_pb2.BudgetScope, a.scope), "subject": a.subject,
        "period": output.enum_short(cost_pb2.BudgetPeriod, a.period),
        "period_start": output.when(a.period_start), "period_end": output.when(a.period_end),
        "percent": a.percent, "limit_reached": a.percent >= 100,
        "spent_usd": usd(a.spent_micro_usd), "limit_usd": usd(a.limit_micro_usd),
        "spent_micro_usd": a.spent_micro_usd, "limit_micro_usd": a.limit_micro_usd,
        "audit_shipped": a.audit_shipped, "webhook_url": w.url,
        "webhook_state": output.enum_short(cost_pb2.WebhookState, w.state) if w.state else "",
        "webhook_attempts": w.attempts, "webhook_last_error": w.last_error,
    }  # fmt: skip


def _webhook_cell(r: dict) -> str:
    if not r["webhook_url"]:
        return "-"
    if r["webhook_state"] == "delivered":
        return "delivered"
    tries = f"{r['webhook_attempts']} attempt{'s' if r['webhook_attempts'] != 1 else ''}"
    error = f": {r['webhook_last_error']}" if r["webhook_last_error"] else ""
    return f"{r['webhook_state']} ({tries}){error}"


def alert_row(a: cost_pb2.Alert) -> list[object]:
    r = alert_record(a)
    percent = f"{r['percent']}%" + (" (limit)" if r["limit_reached"] else "")
    return [r["time"], r["budget"], percent, r["spent_usd"], r["limit_usd"], r["period_start"] or "lifetime",
            "shipped" if r["audit_shipped"] else "pending", _webhook_cell(r)]  # fmt: skip


def budget_alerts(ctx: Ctx, args: argparse.Namespace) -> int:
    """Budget alerts (thresholds crossed per budget period), newest first (ListAlerts)."""
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    req = cost_pb2.ListAlertsRequest(budget=args.budget or "", limit=args.limit or 0)
    resp = _call(ctx, "ListAlerts", req)
    fmt = "json" if ctx.json and args.format == "table" else args.format
    if fmt == "json":
        print(json.dumps([alert_record(a) for a in resp.alerts], indent=2))
    else:
        output.table(ALERT_HEADERS, [alert_row(a) for a in resp.alerts])
    sys.stdout.flush()
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    defaults = {"direct_addr_env": DIRECT_ADDR_ENV, "cli_service": "cost service"}
    cost = sub.add_parser("cost", help="cost: usage reports")
    c = cost.add_subparsers(dest="verb", required=True, metavar="ACTION")
    p = c.add_parser("report", parents=[common], help="ledger totals grouped by dimensions over a time range")
    p.add_argument("--by", default="", help=f"comma-separated dimensions: {', '.join(DIMENSIONS)}")
    p.add_argument("--since", default="30d", help="from this time: ISO time or a duration ago (7d; 30d)")
    p.add_argument("--until", help="before this time (default now): ISO time or a duration ago")
    p.add_argument("--format", choices=REPORT_FORMATS, default="table", help="table (default), json or csv")
    p.set_defaults(handler=cost_report, **defaults)
    add_advise(c, common, defaults)  # `harness cost advise`
    add_prices(sub, common, defaults)  # `harness price list|set`

    budget = sub.add_parser("budget", help="cost budgets: set, list, show, delete, alerts")
    b = budget.add_subparsers(dest="verb", required=True, metavar="ACTION")
    p = b.add_parser("set", parents=[common], help="create or replace a budget")
    p.add_argument("name", help="budget name")
    scopes = ", ".join(output.enum_choices(cost_pb2.BudgetScope))
    periods = ", ".join(output.enum_choices(cost_pb2.BudgetPeriod))
    p.add_argument("--scope", type=SCOPE, required=True, help=scopes)
    p.add_argument("--subject", required=True, help="the user, team, project or agent it applies to")
    p.add_argument("--period", type=PERIOD, required=True, help=periods)
    p.add_argument("--limit-usd", required=True, help="hard limit in USD, e.g. 500 or 12.50")
    p.add_argument("--soft", help="alert thresholds in percent of the limit (default 50,80,95)")
    p.add_argument("--webhook", help="http(s) URL called on alerts")
    p.set_defaults(handler=budget_set, **defaults)
    p = b.add_parser("list", parents=[common], help="budgets with their spend this period")
    p.add_argument("--scope", type=SCOPE, help=f"only this scope ({scopes})")
    p.set_defaults(handler=budget_list, **defaults)
    p = b.add_parser("show", parents=[common], help="one budget: spend, remaining, reset time")
    p.add_argument("name", help="budget name")
    p.set_defaults(handler=budget_show, **defaults)
    p = b.add_parser("delete", parents=[common], help="delete a budget")
    p.add_argument("name", help="budget name")
    p.set_defaults(handler=budget_delete, **defaults)
    p = b.add_parser("alerts", parents=[common], help="alerts raised: thresholds crossed per budget period")
    p.add_argument("--budget", help="only this budget's alerts")
    p.add_argument("--limit", type=int, help="at most this many, newest first (default 500)")
    p.add_argument("--format", choices=ALERT_FORMATS, default="table", help="table (default) or json")
    p.set_defaults(handler=budget_alerts, **defaults)
