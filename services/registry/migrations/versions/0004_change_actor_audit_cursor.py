"""Who made each change (actor, auth method, request and trace id, action) and the audit feed's
cursor: how far the change log has been shipped to the audit service.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, length); every column is "" for changes made before this migration.
_ACTOR_COLUMNS = (
    ("action", 16),
    ("actor_user", 128),
    ("actor_agent", 63),
    ("actor_service", 63),
    ("auth_method", 16),
    ("request_id", 128),
    ("trace_id", 32),
)


def upgrade() -> None:
    with op.batch_alter_table("changes") as batch:
        for name, length in _ACTOR_COLUMNS:
            batch.add_column(sa.Column(name, sa.String(length), server_default="", nullable=False))
    op.create_table(
        "audit_cursor",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("audit_cursor")
    with op.batch_alter_table("changes") as batch:
        for name, _ in reversed(_ACTOR_COLUMNS):
            batch.drop_column(name)
