"""Checks on what callers send the cost service, and timestamp conversions (no gRPC, no DB)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from google.protobuf import timestamp_pb2
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2

from services.common.errors import InvalidArgument
from services.common.limits import check_count, check_length, check_range, timestamp_us

MAX_EVENT_ID = 128
# Per usage event: more would be a bug or a probe, and the ledger's sums must stay in int64.
MAX_TOKENS = 10**9
MAX_GPU_SECONDS = 10**7
MAX_MICRO_USD = 10**12  # a price or a budget limit: a million dollars
MAX_NAME_CHARS = 256  # budget names and subjects, price subjects
MAX_URL_CHARS = 2048
DEFAULT_ALERT_PERCENT = (50, 80, 95)
SCOPES = (
    cost_pb2.BUDGET_SCOPE_USER,
    cost_pb2.BUDGET_SCOPE_TEAM,
    cost_pb2.BUDGET_SCOPE_PROJECT,
    cost_pb2.BUDGET_SCOPE_AGENT,
)


def ts_to_us(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def us_to_ts(us: int) -> timestamp_pb2.Timestamp:
    seconds, micros = divmod(us, 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000)


def validate_usage(events: Sequence[common_pb2.UsageEvent]) -> None:
    """Raises InvalidArgument naming the first bad event by its index in the batch."""
    for i, ev in enumerate(events):
        if not ev.event_id:
            raise InvalidArgument(f"event {i}: event_id is required")
        if len(ev.event_id) > MAX_EVENT_ID:
            raise InvalidArgument(f"event {i}: event_id is longer than {MAX_EVENT_ID} characters")
        u = ev.usage
        if min(u.input_tokens, u.output_tokens, u.cached_input_tokens) < 0:
            raise InvalidArgument(f"event {i} ({ev.event_id}): token counts must not be negative")
        if not math.isfinite(u.gpu_seconds) or u.gpu_seconds < 0:
            raise InvalidArgument(f"event {i} ({ev.event_id}): gpu_seconds must be a finite number >= 0")
        check_range(f"event {i} ({ev.event_id}): gpu_seconds", u.gpu_seconds, 0, MAX_GPU_SECONDS)
        for name in ("input_tokens", "output_tokens", "cached_input_tokens"):
            check_range(f"event {i} ({ev.event_id}): {name}", getattr(u, name), 0, MAX_TOKENS)
        if ev.HasField("time"):
            timestamp_us(f"event {i} ({ev.event_id}): time", ev.time)


def validate_budget(b: cost_pb2.Budget) -> tuple[int, ...]:
    """Checks a budget; returns its alert thresholds (defaults filled in, sorted, unique)."""
    if not b.name:
        raise InvalidArgument("budget.name is required")
    check_length("budget.name", b.name, MAX_NAME_CHARS)
    check_length("budget.subject", b.subject, MAX_NAME_CHARS)
    check_length("budget.webhook_url", b.webhook_url, MAX_URL_CHARS)
    check_count("budget.alert_percent", b.alert_percent, 100)
    if b.scope not in SCOPES:
        raise InvalidArgument("budget.scope is required (user, team, project or agent)")
    if not b.subject:
        raise InvalidArgument("budget.subject is required (the user, team, project or agent name)")
    if b.period not in cost_pb2.BudgetPeriod.values() or b.period == cost_pb2.BUDGET_PERIOD_UNSPECIFIED:
        raise InvalidArgument(
            f"budget.period {b.period} cannot be aligned to the calendar: use daily, weekly, monthly or lifetime"
        )
    if b.limit_micro_usd <= 0:
        raise InvalidArgument("budget.limit_micro_usd must be > 0")
    check_range("budget.limit_micro_usd", b.limit_micro_usd, 1, MAX_MICRO_USD)
    if any(p <= 0 or p > 100 for p in b.alert_percent):
        raise InvalidArgument("budget.alert_percent values must be in 1..100")
    if b.webhook_url and not b.webhook_url.startswith(("http://", "https://")):
        raise InvalidArgument("budget.webhook_url must be an http(s) URL")
    return tuple(sorted(set(b.alert_percent))) or DEFAULT_ALERT_PERCENT
