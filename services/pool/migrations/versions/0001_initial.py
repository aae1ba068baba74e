"""Initial pool schema: the durable deployment claims (`pool_claims`).

This is exactly what `metadata.create_all` made before migrations existed, so such a database
is stamped at this revision and upgraded from here (see `services.common.migrate`).

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pool_claims",
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("owner", sa.String(length=256), nullable=False),
        sa.Column("replicas", sa.Integer(), nullable=False),
        sa.Column("idle_ttl_s", sa.Float(), nullable=False),
        # Per model, kept on each of its rows: a cold deployment stays cold across a restart.
        sa.Column("scaled_to_zero", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("model", "owner"),  # one claim per (model, owner)
    )


def downgrade() -> None:
    op.drop_table("pool_claims")
