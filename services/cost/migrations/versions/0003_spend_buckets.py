"""Spend per budget scope and subject in 15-minute buckets, filled from the ledger once here and
then kept by the store with each recorded batch (budget spend reads it).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BUCKET_US = 15 * 60 * 1_000_000
# cost_pb2.BudgetScope values -> the ledger column naming the subject
SCOPES = {1: "user", 2: "team", 3: "project", 4: "agent"}


def upgrade() -> None:
    op.create_table(
        "spend_buckets",
        sa.Column("scope", sa.Integer(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("bucket_us", sa.BigInteger(), nullable=False),
        sa.Column("cost_micro_usd", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "subject", "bucket_us"),
    )
    for scope, column in SCOPES.items():
        bucket = f"(time_us / {BUCKET_US}) * {BUCKET_US}"  # integer division on both databases
        op.execute(
            f"INSERT INTO spend_buckets (scope, subject, bucket_us, cost_micro_usd) "
            f'SELECT {scope}, "{column}", {bucket}, SUM(cost_micro_usd) FROM usage_ledger '
            f'WHERE "{column}" <> \'\' GROUP BY "{column}", {bucket} HAVING SUM(cost_micro_usd) > 0'
        )


def downgrade() -> None:
    op.drop_table("spend_buckets")
