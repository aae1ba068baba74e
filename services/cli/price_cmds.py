"""`harness price list|set`: the cost service's price table (Cost.ListPrices / Cost.SetPrice).

Prices are versioned: `set` adds the version in force from --effective (default now) until the
next version of the same kind and subject, and reports price usage by the version in force when
it happened. Setting the same (kind, subject, effective time) again replaces that version.
Reached like the other cost commands (HARNESS_COST_ADDR with the ops certificate, else Envoy);
reading needs the admin or finance role, setting needs admin. The CLI shows and takes USD.
"""

from __future__ import annotations

import argparse

from google.protobuf.timestamp_pb2 import Timestamp
from harness.cost.v1 import cost_pb2

from services.cli import output
from services.cli.audit_cmds import parse_time
from services.cli.base import Ctx, enum_arg
from services.cli.cost_client import _call, parse_usd, usd

KIND = enum_arg(cost_pb2.PriceKind)
UNIT = {
    cost_pb2.PRICE_KIND_MODEL_INPUT_TOKENS: "1M input tokens",
    cost_pb2.PRICE_KIND_MODEL_OUTPUT_TOKENS: "1M output tokens",
    cost_pb2.PRICE_KIND_GPU_HOUR: "GPU-hour",
    cost_pb2.PRICE_KIND_TOOL_CALL: "call",
}
HEADERS = ("KIND", "SUBJECT", "USD", "PER", "EFFECTIVE")


def price_row(p: cost_pb2.Price) -> list[object]:
    effective = p.effective_time.ToDatetime().isoformat() + "Z" if p.HasField("effective_time") else ""
    kind = output.enum_short(cost_pb2.PriceKind, p.kind)
    return [kind, p.subject, usd(p.micro_usd), UNIT.get(p.kind, "?"), effective]


def price_list(ctx: Ctx, args: argparse.Namespace) -> int:
    """Prices in force at --at (default now), or every version with --all; by kind and subject."""
    req = cost_pb2.ListPricesRequest()
    if not args.all:
        if args.at:
            req.at_time.CopyFrom(parse_time(args.at))
        else:
            req.at_time.GetCurrentTime()
    resp = _call(ctx, "ListPrices", req)
    wanted = [p for p in resp.prices if not args.kind or p.kind == args.kind]
    rows = sorted(wanted, key=lambda p: (p.kind, p.subject, p.effective_time.ToMicroseconds()))
    del resp.prices[:]
    resp.prices.extend(rows)
    return ctx.emit(resp, lambda r: output.table(HEADERS, [price_row(p) for p in r.prices]))


def price_set(ctx: Ctx, args: argparse.Namespace) -> int:
    """Adds (or replaces) the version of a price in force from --effective."""
    effective = parse_time(args.effective) if args.effective else Timestamp()
    if not args.effective:
        effective.GetCurrentTime()
    price = cost_pb2.Price(
        kind=args.kind, subject=args.subject, micro_usd=parse_usd(args.usd, "--usd", zero_ok=True),
        effective_time=effective,
    )  # fmt: skip
    resp = _call(ctx, "SetPrice", cost_pb2.SetPriceRequest(price=price))
    return ctx.emit(resp, lambda r: output.table(HEADERS, [price_row(r.price)]))


def add_prices(sub: argparse._SubParsersAction, common: argparse.ArgumentParser, defaults: dict) -> None:
    kinds = ", ".join(output.enum_choices(cost_pb2.PriceKind))
    price = sub.add_parser("price", help="cost prices: list, set (versioned by effective time)")
    c = price.add_subparsers(dest="verb", required=True, metavar="ACTION")
    p = c.add_parser("list", parents=[common], help="prices in force now (or at --at, or every version)")
    p.add_argument("--at", help="in force at this time: ISO time or a duration ago (7d)")
    p.add_argument("--all", action="store_true", help="every version, past and future")
    p.add_argument("--kind", type=KIND, help=f"only this kind ({kinds})")
    p.set_defaults(handler=price_list, **defaults)
    p = c.add_parser("set", parents=[common], help="add a price version (admin)")
    p.add_argument("kind", type=KIND, help=kinds)
    p.add_argument("subject", help="model name, GPU type (e.g. H100-80GB) or tool name")
    p.add_argument("--usd", required=True, help="USD per unit: 1M tokens, GPU-hour or call (0 = free)")
    p.add_argument("--effective", help="in force from this ISO time (default now; may be in the future)")
    p.set_defaults(handler=price_set, **defaults)
