"""`harness top`: a live view of the fleet, refreshed every second (`--once`: one frame).

Agents come from the routers' and the cost service's /metrics (HARNESS_ROUTER_METRICS and
HARNESS_COST_METRICS in `.harness/env`, or --metrics); endpoints, budgets and pending approvals
from the Pool, Cost and Audit APIs through the front door (a user with the admin role sees
them all). A source that cannot be read is named under the frame; the rest still shows.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import grpc
from harness.audit.v1 import audit_pb2, audit_pb2_grpc
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2, cost_pb2_grpc
from harness.pool.v1 import pool_pb2, pool_pb2_grpc
from rich.console import Console
from rich.live import Live

from services.cli.base import Ctx, UsageError
from services.cli.connect import DEFAULT_ROOT, read_env_file
from services.cli.top_data import AgentStats, collect
from services.cli.top_view import Frame, render

MIN_INTERVAL_S, MAX_INTERVAL_S = 0.2, 60.0
MAX_METRICS_URLS = 64
MIN_WIDTH, MAX_WIDTH = 40, 1000
METRICS_ENV = ("HARNESS_ROUTER_METRICS", "HARNESS_COST_METRICS")


def metrics_urls(args: argparse.Namespace) -> list[str]:
    """--metrics, else the routers' and cost's metrics URLs from the environment or `<root>/env`."""
    urls = list(args.metrics or ())
    if not urls:
        root = Path(getattr(args, "root", None) or os.environ.get("HARNESS_ROOT") or DEFAULT_ROOT)
        filed = read_env_file(root / "env")
        for name in METRICS_ENV:
            urls += [u for u in (os.environ.get(name) or filed.get(name, "")).split(",") if u]
    if not urls:
        raise UsageError(
            "no metrics to read: run `harness up` (it writes HARNESS_ROUTER_METRICS to .harness/env) "
            "or pass --metrics URL for each router and the cost service"
        )
    if len(urls) > MAX_METRICS_URLS:
        raise UsageError(f"{len(urls)} metrics URLs; at most {MAX_METRICS_URLS}")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"metrics URL {url[:200]!r}: use http:// or https://")
    return urls


def _call(problems: list[str], what: str, fn, request):
    try:
        return fn(request)
    except grpc.RpcError as exc:
        code = exc.code().name if callable(getattr(exc, "code", None)) else "ERROR"
        details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
        problems.append(f"{what}: {code}: {details}")
        return None


def read_apis(ctx: Ctx, problems: list[str]) -> tuple[list, list, list]:
    """Endpoints, budgets and pending approvals (what cannot be read stays empty, named in problems)."""
    if ctx._channel is None:
        ctx._channel = ctx.conn.channel()
    ch, md, timeout = ctx._channel, ctx.conn.metadata(), min(ctx.conn.timeout_s, 5.0)
    pool = pool_pb2_grpc.PoolStub(ch)
    cost = cost_pb2_grpc.CostStub(ch)
    audit = audit_pb2_grpc.AuditStub(ch)
    eps = _call(problems, "pool", lambda r: pool.ListEndpoints(r, metadata=md, timeout=timeout),
                pool_pb2.ListEndpointsRequest())  # fmt: skip
    budgets = _call(problems, "cost", lambda r: cost.ListBudgets(r, metadata=md, timeout=timeout),
                    cost_pb2.ListBudgetsRequest())  # fmt: skip
    pending = audit_pb2.ListApprovalsRequest(
        state=audit_pb2.APPROVAL_STATE_PENDING, page=common_pb2.PageRequest(page_size=100)
    )
    approvals = _call(
        problems, "audit", lambda r: audit.ListApprovals(r, metadata=md, timeout=timeout), pending
    )
    return (
        list(eps.endpoints) if eps else [],
        list(budgets.budgets) if budgets else [],
        list(approvals.approvals) if approvals else [],
    )


def frame(ctx: Ctx, stats: AgentStats, urls: list[str]) -> Frame:
    scrape, problems = collect(urls)
    stats.add(scrape)
    endpoints, budgets, approvals = read_apis(ctx, problems)
    return Frame(stats.rows(), endpoints, budgets, approvals, problems)


def top(ctx: Ctx, args: argparse.Namespace) -> int:
    if not MIN_INTERVAL_S <= args.interval <= MAX_INTERVAL_S:
        raise UsageError(f"--interval must be {MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g} seconds")
    if args.width and not MIN_WIDTH <= args.width <= MAX_WIDTH:
        raise UsageError(f"--width must be {MIN_WIDTH} to {MAX_WIDTH} columns")
    urls = metrics_urls(args)
    stats = AgentStats()
    console = Console(width=args.width) if args.width else Console()
    stats.add(collect(urls)[0])  # a first scrape, so the first frame already has rates
    time.sleep(args.interval)
    if args.once:
        console.print(render(frame(ctx, stats, urls)))
        return 0
    try:
        with Live(render(frame(ctx, stats, urls)), console=console, auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(args.interval)
                live.update(render(frame(ctx, stats, urls)), refresh=True)
    except KeyboardInterrupt:
        return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "top", parents=[common], help="live view of agents, endpoints, budgets and approvals (Ctrl-C quits)"
    )
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    p.add_argument("--width", type=int, default=0, help="columns to draw in (default: the terminal's)")
    p.add_argument(
        "--metrics", action="append", metavar="URL",
        help="a router's or the cost service's /metrics URL (repeat; default: from .harness/env)",
    )  # fmt: skip
    # Through the front door (HARNESS_ADDR) with the user's token: pool, cost and audit in one.
    p.set_defaults(handler=top, direct_addr_env="HARNESS_TOP_ADDR", cli_service="front door")
