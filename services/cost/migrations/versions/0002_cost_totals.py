"""Running cost per (team, project, agent, model), filled from the ledger once here and then kept
by the store in the same transaction as each recorded batch (harness_cost_usd_total reads it).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cost_totals",
        sa.Column("team", sa.Text(), nullable=False),
        sa.Column("project", sa.Text(), nullable=False),
        sa.Column("agent", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("cost_micro_usd", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("team", "project", "agent", "model"),
    )
    op.execute(
        "INSERT INTO cost_totals (team, project, agent, model, cost_micro_usd) "
        "SELECT team, project, agent, model, SUM(cost_micro_usd) FROM usage_ledger "
        "GROUP BY team, project, agent, model HAVING SUM(cost_micro_usd) > 0"
    )


def downgrade() -> None:
    op.drop_table("cost_totals")
