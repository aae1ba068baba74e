"""Cost tables. Money is integer micro-USD; times are integer microseconds since the epoch (UTC)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

metadata = MetaData()
_S = {"nullable": False, "default": ""}
# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
_ID = BigInteger().with_variant(Integer, "sqlite")

prices = Table(
    "prices",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("kind", Integer, nullable=False),
    Column("subject", Text, nullable=False),
    Column("micro_usd", BigInteger, nullable=False),
    Column("effective_us", BigInteger, nullable=False),
    Column("set_us", BigInteger, nullable=False),
    # One version per (kind, subject, effective time): setting it again replaces it, so
    # seeding the same price twice is idempotent and past reports keep older versions.
    UniqueConstraint("kind", "subject", "effective_us", name="uq_price_version"),
)

ledger = Table(
    "usage_ledger",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    # UNIQUE: the idempotency guarantee for resent usage events, enforced by the database.
    Column("event_id", String(128), nullable=False, unique=True),
    Column("time_us", BigInteger, nullable=False),
    # Calendar day of `time` in the service's configured timezone at record time (YYYY-MM-DD).
    Column("day", String(10), nullable=False),
    Column("user", Text, **_S),
    Column("team", Text, **_S),
    Column("project", Text, **_S),
    Column("agent", Text, **_S),
    Column("agent_version", Text, **_S),
    Column("model", Text, **_S),
    Column("deployment", Text, **_S),
    Column("gpu_type", Text, **_S),
    Column("tool", Text, **_S),
    Column("tool_action", Text, **_S),
    Column("request_id", Text, **_S),
    Column("trace_id", Text, **_S),
    Column("session_id", Text, **_S),
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
    Column("cached_input_tokens", BigInteger, nullable=False, default=0),
    Column("gpu_seconds", Float, nullable=False, default=0.0),
    Column("cached", Boolean, nullable=False, default=False),
    # Cost split kept per row so the advisor can tell token, GPU and tool spend apart.
    Column("token_micro_usd", BigInteger, nullable=False, default=0),
    Column("gpu_micro_usd", BigInteger, nullable=False, default=0),
    Column("tool_micro_usd", BigInteger, nullable=False, default=0),
    Column("cost_micro_usd", BigInteger, nullable=False, default=0),
    # Prices that were missing when the event was priced ("gpu_hour:A100", ...); "" = fully priced.
    Column("unpriced", Text, **_S),
    Column("recorded_us", BigInteger, nullable=False),
    # The engine reported no token counts: the router estimated them from the text.
    Column("usage_estimated", Boolean, nullable=False, default=False, server_default=false()),
)

# Cost of the whole ledger per label set of harness_cost_usd_total, kept in the transaction that
# records the usage (services/cost/store.py), so a scrape reads one row per label set instead of
# summing the ledger. Only label sets with a cost have a row.
cost_totals = Table(
    "cost_totals",
    metadata,
    Column("team", Text, primary_key=True),
    Column("project", Text, primary_key=True),
    Column("agent", Text, primary_key=True),
    Column("model", Text, primary_key=True),
    Column("cost_micro_usd", BigInteger, nullable=False),
)

# Spend per budget scope and subject in 15-minute buckets of event time, kept like cost_totals.
# Every UTC offset in use is a whole number of quarter hours, so any calendar period in any
# timezone is a whole number of buckets, and a budget's spend (GetBudget, ListBudgets as every
# router polls it, alerts) sums at most ~3k rows a month instead of the period's ledger rows.
SPEND_BUCKET_US = 15 * 60 * 1_000_000
spend_buckets = Table(
    "spend_buckets",
    metadata,
    Column("scope", Integer, primary_key=True),  # cost_pb2.BudgetScope
    Column("subject", Text, primary_key=True),
    Column("bucket_us", BigInteger, primary_key=True),  # start of the quarter hour
    Column("cost_micro_usd", BigInteger, nullable=False),
)

# Budgets sum a scope's spend over a time range; reports scan a time range.
Index("ix_ledger_time", ledger.c.time_us)
Index("ix_ledger_project_time", ledger.c.project, ledger.c.time_us)
Index("ix_ledger_team_time", ledger.c.team, ledger.c.time_us)
Index("ix_ledger_user_time", ledger.c.user, ledger.c.time_us)
Index("ix_ledger_agent_time", ledger.c.agent, ledger.c.time_us)

budgets = Table(
    "budgets",
    metadata,
    Column("name", String(256), primary_key=True),
    Column("scope", Integer, nullable=False),
    Column("subject", Text, nullable=False),
    Column("period", Integer, nullable=False),
    Column("limit_micro_usd", BigInteger, nullable=False),
    Column("alert_percent", Text, nullable=False, default="[]"),  # JSON list of ints
    Column("webhook_url", Text, **_S),
    Column("updated_us", BigInteger, nullable=False),
)

# Budget alerts (services/cost/alerts.py): one row per threshold crossed per budget period. The
# UNIQUE key makes each threshold fire once per period, whichever replica or resend saw it first.
# The row is also the delivery outbox: audit shipping and webhook state live on it.
budget_alerts = Table(
    "budget_alerts",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("budget", String(256), nullable=False),
    Column("period_start_us", BigInteger, nullable=False),  # 0 for lifetime budgets
    Column("percent", Integer, nullable=False),  # 100 = the hard limit reached
    # The budget as it was when the threshold was crossed.
    Column("scope", Integer, nullable=False),
    Column("subject", Text, nullable=False),
    Column("period", Integer, nullable=False),
    Column("period_end_us", BigInteger, nullable=False, default=0),  # 0 for lifetime budgets
    Column("limit_micro_usd", BigInteger, nullable=False),
    Column("spent_micro_usd", BigInteger, nullable=False),  # period spend when it was seen crossed
    Column("created_us", BigInteger, nullable=False),
    # Delivery: audit (0 = not yet acknowledged by Audit.Ingest) and the budget's webhook.
    Column("audit_shipped_us", BigInteger, nullable=False, default=0),
    Column("webhook_url", Text, **_S),
    Column("webhook_state", String(16), **_S),  # "" (none), pending, delivered, failed
    Column("webhook_attempts", Integer, nullable=False, default=0),
    Column("webhook_next_us", BigInteger, nullable=False, default=0),  # next try; a claim's lease end
    Column("webhook_delivered_us", BigInteger, nullable=False, default=0),
    Column("webhook_last_error", Text, **_S),
    UniqueConstraint("budget", "period_start_us", "percent", name="uq_budget_alert"),
)
Index("ix_budget_alerts_created", budget_alerts.c.created_us)
Index("ix_budget_alerts_audit", budget_alerts.c.audit_shipped_us)
Index("ix_budget_alerts_webhook", budget_alerts.c.webhook_state, budget_alerts.c.webhook_next_us)

# Admin changes (prices, budgets): written in the change's own transaction, shipped to the audit
# log as ADMIN_CHANGE events (services/cost/admin_changes.py). `details` is JSON of what changed,
# never a secret (a budget's webhook URL is reported as present or not).
admin_changes = Table(
    "admin_changes",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("time_us", BigInteger, nullable=False),
    Column("object", Text, nullable=False),  # price:<kind>:<subject>, budget:<name>
    Column("action", String(32), nullable=False),  # set, delete
    Column("actor_user", Text, **_S),
    Column("actor_agent", Text, **_S),
    Column("actor_service", Text, **_S),
    Column("auth_method", String(32), **_S),
    Column("request_id", Text, **_S),
    Column("trace_id", String(64), **_S),
    Column("details", Text, nullable=False, default="{}"),
    Column("audit_shipped_us", BigInteger, nullable=False, default=0),  # 0 = not yet acknowledged
)
Index("ix_admin_changes_audit", admin_changes.c.audit_shipped_us, admin_changes.c.id)
