"""API keys bound to an agent, and the agent's switch that lets them stand in for its certificate.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("agent", sa.String(63), server_default="", nullable=False))
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("api_key_auth", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("api_key_auth")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("agent")
