"""Initial registry schema: tenancy, API keys, agents and versions, catalogs, change log, casbin rules.

This is exactly what `Base.metadata.create_all` made before migrations existed, so such a
database is stamped at this revision and upgraded from here (see `migrate.upgrade`).

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "changes",
        sa.Column("revision", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("time", TS, nullable=False),
        sa.PrimaryKeyConstraint("revision"),
    )
    op.create_index("ix_changes_kind", "changes", ["kind"])
    op.create_table(
        "teams",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=255), nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "projects",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("team", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=255), nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.ForeignKeyConstraint(["team"], ["teams.name"]),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_index("ix_projects_team", "projects", ["team"])
    op.create_table(
        "users",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("display_name", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=255), nullable=False),
        sa.Column("team", sa.String(length=63), nullable=True),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.ForeignKeyConstraint(["team"], ["teams.name"]),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_index("ix_users_team", "users", ["team"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user", sa.String(length=128), nullable=False),
        sa.Column("project", sa.String(length=63), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("expire_time", TS, nullable=True),
        sa.Column("revoke_time", TS, nullable=True),
        sa.ForeignKeyConstraint(["project"], ["projects.name"]),
        sa.ForeignKeyConstraint(["user"], ["users.name"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_api_keys_project", "api_keys", ["project"])
    op.create_index("ix_api_keys_user", "api_keys", ["user"])
    op.create_table(
        "models",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("triton_model", sa.String(length=255), nullable=False),
        sa.Column("family", sa.String(length=64), nullable=False),
        sa.Column("parameters_b", sa.Float(), nullable=False),
        sa.Column("quantization", sa.String(length=32), nullable=False),
        sa.Column("memory_gib", sa.Float(), nullable=False),
        sa.Column("context_length", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "tools",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("endpoint", sa.String(length=1024), nullable=False),
        sa.Column("description", sa.String(length=1024), nullable=False),
        sa.Column("actions", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name", "version"),
    )
    op.create_table(
        "agents",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("spiffe_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("project", sa.String(length=63), nullable=False),
        sa.Column("description", sa.String(length=1024), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("slo", sa.JSON(), nullable=False),
        sa.Column("pii", sa.JSON(), nullable=False),
        sa.Column("traffic", sa.JSON(), nullable=False),
        sa.Column("traffic_history", sa.JSON(), nullable=False),
        sa.Column("rpm_limit", sa.BigInteger(), nullable=False),
        sa.Column("tpm_limit", sa.BigInteger(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["project"], ["projects.name"]),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("spiffe_id"),
    )
    op.create_index("ix_agents_project", "agents", ["project"])
    op.create_index("ix_agents_state", "agents", ["state"])
    op.create_table(
        "agent_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("agent", sa.String(length=63), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("tools", sa.JSON(), nullable=False),
        sa.Column("default_sampling", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.ForeignKeyConstraint(["agent"], ["agents.name"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("agent", "version"),
    )
    op.create_index("ix_agent_versions_agent", "agent_versions", ["agent"])
    # The casbin SQLAlchemy adapter's table (its CasbinRule model); the adapter reads and
    # writes it, the migrations own its shape.
    op.create_table(
        "casbin_rule",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ptype", sa.String(length=255), nullable=True),
        *(sa.Column(f"v{i}", sa.String(length=255), nullable=True) for i in range(6)),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    # Children before parents (foreign keys); dropping a table drops its indexes.
    for table in (
        "casbin_rule",
        "agent_versions",
        "agents",
        "tools",
        "models",
        "api_keys",
        "users",
        "projects",
        "teams",
        "changes",
    ):
        op.drop_table(table)
