"""Initial audit schema: the hash-chained audit log and human approvals of tool calls.

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

# Who/what/where columns both tables carry ("" when unset, never NULL).
CONTEXT = ("user", "agent", "agent_version", "project", "team", "auth_method")
TRACE = ("request_id", "trace_id", "session_id", "step_id", "parent_event_id")


def _text(*names: str) -> list[sa.Column]:
    return [sa.Column(name, sa.Text(), nullable=False) for name in names]


def _big(name: str) -> sa.Column:
    return sa.Column(name, sa.BigInteger(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "audit_records",
        # Assigned by the store under the chain lock: no SERIAL/identity behind it.
        sa.Column("sequence", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        _big("time_us"),
        sa.Column("kind", sa.Integer(), nullable=False),
        *_text(*CONTEXT, *TRACE, "object", "action"),
        sa.Column("decision", sa.Integer(), nullable=False),
        *_text("rule", "status", "model", "tool", "source", "details", "prev_hash"),
        sa.Column("hash", sa.String(length=64), nullable=False),
        _big("ingest_time_us"),
        sa.PrimaryKeyConstraint("sequence"),
        sa.UniqueConstraint("event_id"),  # the idempotency guarantee for resent events
    )
    op.create_index("ix_audit_time", "audit_records", ["time_us"])
    for name, column in (
        ("trace", "trace_id"),
        ("session", "session_id"),
        ("user", "user"),
        ("agent", "agent"),
        ("request", "request_id"),
    ):
        op.create_index(f"ix_audit_{name}", "audit_records", [column])
    op.create_table(
        "approvals",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("request_key", sa.String(length=256), nullable=False),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        *_text(*CONTEXT, *TRACE, "tool", "action"),
        sa.Column("risk", sa.Integer(), nullable=False),
        *_text("arguments", "reason", "approver", "comment"),
        _big("create_time_us"),
        _big("expire_time_us"),
        _big("decide_time_us"),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    op.create_index("ix_approvals_state", "approvals", ["state", "expire_time_us"])
    op.create_index("ix_approvals_key", "approvals", ["requested_by", "request_key"])


def downgrade() -> None:
    # No foreign keys between these tables; dropping a table drops its indexes.
    for table in ("approvals", "audit_records"):
        op.drop_table(table)
