"""Initial cost schema: price versions, the priced usage ledger, budgets and budget alerts.

This is exactly what `metadata.create_all` made before migrations existed, so such a database
is stamped at this revision and upgraded from here (see `services.common.migrate`).

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT (as in models.py).
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _id() -> sa.Column:
    return sa.Column("id", ID, autoincrement=True, nullable=False)


def _big(name: str) -> sa.Column:
    return sa.Column(name, sa.BigInteger(), nullable=False)


def _text(*names: str) -> list[sa.Column]:
    return [sa.Column(name, sa.Text(), nullable=False) for name in names]


def upgrade() -> None:
    op.create_table(
        "prices",
        _id(),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        _big("micro_usd"),
        _big("effective_us"),
        _big("set_us"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "subject", "effective_us", name="uq_price_version"),
    )
    op.create_table(
        "usage_ledger",
        _id(),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        _big("time_us"),
        sa.Column("day", sa.String(length=10), nullable=False),
        *_text("user", "team", "project", "agent", "agent_version", "model", "deployment", "gpu_type"),
        *_text("tool", "tool_action", "request_id", "trace_id", "session_id"),
        _big("input_tokens"),
        _big("output_tokens"),
        _big("cached_input_tokens"),
        sa.Column("gpu_seconds", sa.Float(), nullable=False),
        sa.Column("cached", sa.Boolean(), nullable=False),
        _big("token_micro_usd"),
        _big("gpu_micro_usd"),
        _big("tool_micro_usd"),
        _big("cost_micro_usd"),
        *_text("unpriced"),
        _big("recorded_us"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),  # the idempotency guarantee for resent usage events
    )
    op.create_index("ix_ledger_time", "usage_ledger", ["time_us"])
    for dim in ("project", "team", "user", "agent"):
        op.create_index(f"ix_ledger_{dim}_time", "usage_ledger", [dim, "time_us"])
    op.create_table(
        "budgets",
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("scope", sa.Integer(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("period", sa.Integer(), nullable=False),
        _big("limit_micro_usd"),
        *_text("alert_percent", "webhook_url"),
        _big("updated_us"),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "budget_alerts",
        _id(),
        sa.Column("budget", sa.String(length=256), nullable=False),
        _big("period_start_us"),
        sa.Column("percent", sa.Integer(), nullable=False),
        sa.Column("scope", sa.Integer(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("period", sa.Integer(), nullable=False),
        _big("period_end_us"),
        _big("limit_micro_usd"),
        _big("spent_micro_usd"),
        _big("created_us"),
        _big("audit_shipped_us"),
        sa.Column("webhook_url", sa.Text(), nullable=False),
        sa.Column("webhook_state", sa.String(length=16), nullable=False),
        sa.Column("webhook_attempts", sa.Integer(), nullable=False),
        _big("webhook_next_us"),
        _big("webhook_delivered_us"),
        sa.Column("webhook_last_error", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        # Each threshold fires once per budget period, whichever replica saw it first.
        sa.UniqueConstraint("budget", "period_start_us", "percent", name="uq_budget_alert"),
    )
    op.create_index("ix_budget_alerts_created", "budget_alerts", ["created_us"])
    op.create_index("ix_budget_alerts_audit", "budget_alerts", ["audit_shipped_us"])
    op.create_index("ix_budget_alerts_webhook", "budget_alerts", ["webhook_state", "webhook_next_us"])


def downgrade() -> None:
    # No foreign keys between these tables; dropping a table drops its indexes.
    for table in ("budget_alerts", "budgets", "usage_ledger", "prices"):
        op.drop_table(table)
