"""Secrets (a tool's upstream credential, by name) and the tool columns that name them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "secrets",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("value", sa.String(8192), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False, server_default=""),
    )
    with op.batch_alter_table("tools") as batch:
        batch.add_column(sa.Column("credential", sa.String(63), server_default="", nullable=False))
        batch.add_column(sa.Column("credential_header", sa.String(64), server_default="", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("tools") as batch:
        batch.drop_column("credential_header")
        batch.drop_column("credential")
    op.drop_table("secrets")
