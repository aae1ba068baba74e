"""What the cost, price and advise commands share: the Cost stub on the run's channel and
USD <-> micro-USD conversions."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from harness.cost.v1.cost_pb2_grpc import CostStub

from services.cli.base import Ctx, UsageError

MICRO = 1_000_000


def usd(micro: int) -> str:
    """Exact micro-USD as a USD decimal string with 6 places: 3601000 -> "3.601000"."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(int(micro)), MICRO)
    return f"{sign}{whole}.{frac:06d}"


def dollars(micro: int) -> str:
    """ "$3.601000", "-$0.201000" (for people; tables and exports use usd())."""
    text = usd(micro)
    return f"-${text[1:]}" if text.startswith("-") else f"${text}"


def parse_usd(text: str, what: str = "--limit-usd", *, zero_ok: bool = False) -> int:
    """ "12.5" -> 12_500_000 micro-USD; a finite number > 0 (>= 0 with zero_ok), at most 6 decimals."""
    try:
        value = Decimal(text.strip().removeprefix("$"))
    except InvalidOperation:
        raise UsageError(f"{what} must be a number of USD, got {text!r}") from None
    if not value.is_finite() or value < 0 or (value == 0 and not zero_ok):
        raise UsageError(f"{what} must be {'>= 0' if zero_ok else '> 0'}, got {text!r}")
    micro = value * MICRO
    if micro != micro.to_integral_value():
        raise UsageError(f"{what} has more than 6 decimal places (micro-USD is the unit): {text!r}")
    return int(micro)


def stub(ctx: Ctx) -> CostStub:
    """A Cost stub on the run's channel (closed by ctx.close())."""
    if ctx._channel is None:
        ctx._channel = ctx.conn.channel()
    return CostStub(ctx._channel)


def _call(ctx: Ctx, rpc: str, request):
    return getattr(stub(ctx), rpc)(request, metadata=ctx.conn.metadata(), timeout=ctx.conn.timeout_s)
