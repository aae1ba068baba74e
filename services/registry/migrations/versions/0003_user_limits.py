"""Per-user requests-per-minute and tokens-per-minute limits (0 = unlimited), read by routers.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # server_default fills existing rows: every user starts unlimited.
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("rpm_limit", sa.BigInteger(), server_default="0", nullable=False))
        batch.add_column(sa.Column("tpm_limit", sa.BigInteger(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("tpm_limit")
        batch.drop_column("rpm_limit")
