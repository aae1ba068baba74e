"""The outbox of admin changes (`pool_admin_changes`): endpoint registrations, deployments and
applied scaling advice, kept until the audit service acknowledged them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "pool_admin_changes",
        sa.Column("id", _ID, nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
        sa.Column("object", sa.Text(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("actor_user", sa.Text(), nullable=False),
        sa.Column("actor_agent", sa.Text(), nullable=False),
        sa.Column("actor_service", sa.Text(), nullable=False),
        sa.Column("auth_method", sa.String(length=32), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("trace_id", sa.String(length=64), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("audit_shipped_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index("ix_pool_admin_changes_audit", "pool_admin_changes", ["audit_shipped_us", "id"])


def downgrade() -> None:
    op.drop_index("ix_pool_admin_changes_audit", table_name="pool_admin_changes")
    op.drop_table("pool_admin_changes")
