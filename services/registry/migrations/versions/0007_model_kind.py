"""Catalog models have a kind (generation or embedding) and an embedding model its vector length.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), server_default="generation", nullable=False))
        batch.add_column(sa.Column("dimensions", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("dimensions")
        batch.drop_column("kind")
