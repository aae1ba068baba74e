"""Pure cost arithmetic: prices in force, pricing one usage event, calendar budget periods.

Pricing rules (integer micro-USD; prices are micro-USD per unit):
- tokens: input_tokens x input price / 1M + output_tokens x output price / 1M of the event's
  model. Prompt tokens served from the KV prefix cache (cached_input_tokens) are billed like
  any input token: the price table has no separate cached-token price, and their GPU saving
  already shows up in gpu_seconds.
- GPU: gpu_seconds / 3600 x the GPU-hour price of the event's gpu_type.
- tool: the tool-call price of the event's tool, once per event.
- a result served from the router's result cache (`cached`) costs nothing: no model, GPU or
  tool backend did any work. Its tokens are still recorded so reports show the traffic.
- each component is rounded half-up to whole micro-USD; the total is their sum.
- a needed price that does not exist prices that component at 0 and is named in `unpriced`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2

MICRO = 1_000_000
TOKENS_PER_UNIT = 1_000_000  # model prices are per 1M tokens
SECONDS_PER_HOUR = 3600


def round_half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def gpu_time_cost(gpu_seconds: float, hour_price: int) -> int:
    """`gpu_seconds` (exactly as its shortest decimal form reads) at `hour_price` micro-USD per
    GPU-hour, rounded half-up: round_half_up(Fraction(str(s)) * price / 3600) in integers, since
    this runs for every model call (the router's charge and the cost service's ledger)."""
    num, den = Decimal(repr(gpu_seconds)).as_integer_ratio()
    den *= SECONDS_PER_HOUR
    return (2 * num * hour_price + den) // (2 * den)


def usd_to_micro(usd: float | int | str) -> int:
    """USD (as written in config) -> micro-USD, exactly for decimal input like 0.001."""
    return round_half_up(Fraction(str(usd)) * MICRO)


class PriceBook:
    """All price versions, looked up by (kind, subject) at a time."""

    def __init__(self, versions: Iterable[tuple[int, str, int, int]]) -> None:
        # (kind, subject) -> parallel sorted lists of effective times and prices
        self._times: dict[tuple[int, str], list[int]] = {}
        self._prices: dict[tuple[int, str], list[int]] = {}
        for kind, subject, effective_us, micro_usd in sorted(versions, key=lambda v: v[2]):
            self._times.setdefault((kind, subject), []).append(effective_us)
            self._prices.setdefault((kind, subject), []).append(micro_usd)

    def at(self, kind: int, subject: str, time_us: int) -> int | None:
        """Price in force at `time_us` (the latest version effective at or before it)."""
        times = self._times.get((kind, subject))
        if not times:
            return None
        i = bisect.bisect_right(times, time_us)
        return self._prices[(kind, subject)][i - 1] if i else None


@dataclass(frozen=True)
class Priced:
    token_micro_usd: int = 0
    gpu_micro_usd: int = 0
    tool_micro_usd: int = 0
    unpriced: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.token_micro_usd + self.gpu_micro_usd + self.tool_micro_usd


def price_event(event: common_pb2.UsageEvent, time_us: int, book: PriceBook) -> Priced:
    if event.cached:
        return Priced()
    missing: list[str] = []

    def price(kind: int, subject: str) -> int:
        p = book.at(kind, subject, time_us)
        if p is None:
            missing.append(f"{cost_pb2.PriceKind.Name(kind).removeprefix('PRICE_KIND_').lower()}:{subject}")
            return 0
        return p

    u = event.usage
    token = gpu = tool = 0
    if event.model and (u.input_tokens or u.output_tokens):
        in_price = price(cost_pb2.PRICE_KIND_MODEL_INPUT_TOKENS, event.model) if u.input_tokens else 0
        out_price = price(cost_pb2.PRICE_KIND_MODEL_OUTPUT_TOKENS, event.model) if u.output_tokens else 0
        token = round_half_up(
            Fraction(u.input_tokens * in_price + u.output_tokens * out_price, TOKENS_PER_UNIT)
        )
    if u.gpu_seconds > 0 and event.gpu_type:
        gpu_price = price(cost_pb2.PRICE_KIND_GPU_HOUR, event.gpu_type)
        gpu = gpu_time_cost(u.gpu_seconds, gpu_price)
    if event.tool:
        tool = price(cost_pb2.PRICE_KIND_TOOL_CALL, event.tool)
    return Priced(token, gpu, tool, tuple(missing))


def _midnight(d: date, tz: ZoneInfo) -> datetime:
    # Built from the calendar date (not start + 24h) so DST days are 23 or 25 hours long.
    return datetime(d.year, d.month, d.day, tzinfo=tz)


def period_bounds(period: int, now: datetime, tz: ZoneInfo) -> tuple[datetime | None, datetime | None]:
    """[start, end) of the calendar period containing `now` in `tz`; (None, None) = lifetime."""
    today = now.astimezone(tz).date()
    if period == cost_pb2.BUDGET_PERIOD_DAILY:
        return _midnight(today, tz), _midnight(today + timedelta(days=1), tz)
    if period == cost_pb2.BUDGET_PERIOD_WEEKLY:  # ISO week: Monday to Monday
        monday = today - timedelta(days=today.weekday())
        return _midnight(monday, tz), _midnight(monday + timedelta(days=7), tz)
    if period == cost_pb2.BUDGET_PERIOD_MONTHLY:
        first = today.replace(day=1)
        nxt = (first + timedelta(days=32)).replace(day=1)
        return _midnight(first, tz), _midnight(nxt, tz)
    if period == cost_pb2.BUDGET_PERIOD_LIFETIME:
        return None, None
    raise ValueError(f"unknown budget period {period}")


def to_us(dt: datetime) -> int:
    """Aware datetime -> integer microseconds since the epoch."""
    delta = dt - datetime(1970, 1, 1, tzinfo=ZoneInfo("UTC"))
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def local_day(time_us: int, tz: ZoneInfo) -> str:
    dt = datetime(1970, 1, 1, tzinfo=ZoneInfo("UTC")) + timedelta(microseconds=time_us)
    return dt.astimezone(tz).date().isoformat()
