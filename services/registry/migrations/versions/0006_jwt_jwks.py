"""JWT settings may name an OIDC issuer's keys (a JWKS URL or a discovery URL) instead of a PEM key.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jwt_settings") as batch:
        batch.add_column(sa.Column("jwks_url", sa.String(2048), server_default="", nullable=False))
        batch.add_column(sa.Column("oidc_discovery_url", sa.String(2048), server_default="", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("jwt_settings") as batch:
        batch.drop_column("oidc_discovery_url")
        batch.drop_column("jwks_url")
