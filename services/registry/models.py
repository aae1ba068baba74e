"""SQLAlchemy 2 tables of the registry (the casbin_rule table belongs to the casbin adapter).

Lists and nested messages that are always read whole (roles, SLO, traffic split, tool
actions) are JSON columns: nothing queries inside them, and it keeps the schema small.
Every mutation appends a row to `changes`; its id is the registry revision that Watch streams
from, and Agent.revision points at the agent's latest change.

The schema is owned by the Alembic migrations in `migrations/`; a test checks that they and
these classes agree, so change both together (see `migrate.py`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Dates are stored as UTC; SQLite hands them back naive, the store re-attaches UTC.
Timestamp = DateTime(timezone=True)


class Base(DeclarativeBase):
    pass


class TeamRow(Base):
    __tablename__ = "teams"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(255), default="")
    create_time: Mapped[datetime] = mapped_column(Timestamp)


class ProjectRow(Base):
    __tablename__ = "projects"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    team: Mapped[str] = mapped_column(ForeignKey("teams.name"), index=True)
    display_name: Mapped[str] = mapped_column(String(255), default="")
    create_time: Mapped[datetime] = mapped_column(Timestamp)


class UserRow(Base):
    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(255), default="")
    email: Mapped[str] = mapped_column(String(255), default="")
    # NULL when the user belongs to no team (the domain says "").
    team: Mapped[str | None] = mapped_column(ForeignKey("teams.name"), index=True, nullable=True)
    roles: Mapped[list] = mapped_column(JSON, default=list)
    create_time: Mapped[datetime] = mapped_column(Timestamp)
    # Requests and tokens per minute across all of the user's requests (0 = unlimited).
    rpm_limit: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    tpm_limit: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user: Mapped[str] = mapped_column(ForeignKey("users.name"), index=True)
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"), index=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    # sha256 hex of the whole secret; the secret itself is never stored.
    secret_sha256: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(Timestamp)
    expire_time: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    revoke_time: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    agent: Mapped[str] = mapped_column(String(63), default="")  # bound to this agent ("" = none)


class AgentRow(Base):
    __tablename__ = "agents"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    spiffe_id: Mapped[str] = mapped_column(String(255), unique=True)
    type: Mapped[str] = mapped_column(String(32), default="")
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"), index=True)
    description: Mapped[str] = mapped_column(String(1024), default="")
    state: Mapped[str] = mapped_column(String(16), index=True)
    slo: Mapped[dict] = mapped_column(JSON, default=dict)
    pii: Mapped[list] = mapped_column(JSON, default=list)
    traffic: Mapped[list] = mapped_column(JSON, default=list)
    # Earlier splits, newest last; RollbackTrafficSplit pops from here.
    traffic_history: Mapped[list] = mapped_column(JSON, default=list)
    rpm_limit: Mapped[int] = mapped_column(BigInteger, default=0)
    tpm_limit: Mapped[int] = mapped_column(BigInteger, default=0)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)
    api_key_auth: Mapped[bool] = mapped_column(Boolean, default=False)

    versions: Mapped[list[AgentVersionRow]] = relationship(
        order_by="AgentVersionRow.id", lazy="selectin", cascade="all, delete-orphan"
    )


class AgentVersionRow(Base):
    __tablename__ = "agent_versions"
    __table_args__ = (UniqueConstraint("agent", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agent: Mapped[str] = mapped_column(ForeignKey("agents.name"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    models: Mapped[list] = mapped_column(JSON, default=list)
    tools: Mapped[list] = mapped_column(JSON, default=list)
    default_sampling: Mapped[dict] = mapped_column(JSON, default=dict)
    meta: Mapped[dict] = mapped_column("metadata", JSON, default=dict)
    create_time: Mapped[datetime] = mapped_column(Timestamp)


class ModelRow(Base):
    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    triton_model: Mapped[str] = mapped_column(String(255), default="")
    family: Mapped[str] = mapped_column(String(64), default="")
    parameters_b: Mapped[float] = mapped_column(Float, default=0.0)
    quantization: Mapped[str] = mapped_column(String(32), default="")
    memory_gib: Mapped[float] = mapped_column(Float, default=0.0)
    context_length: Mapped[int] = mapped_column(Integer, default=0)
    kind: Mapped[str] = mapped_column(String(16), default="generation")
    dimensions: Mapped[int] = mapped_column(Integer, default=0)


class ToolRow(Base):
    __tablename__ = "tools"

    # Several versions of a tool may be registered; agent versions pin "name" or "name@version".
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True, default="")
    endpoint: Mapped[str] = mapped_column(String(1024), default="")
    description: Mapped[str] = mapped_column(String(1024), default="")
    actions: Mapped[list] = mapped_column(JSON, default=list)
    credential: Mapped[str] = mapped_column(String(63), default="")  # a SecretRow's name
    credential_header: Mapped[str] = mapped_column(String(64), default="")


class SecretRow(Base):
    """A value the routers send upstream (a tool's credential). Never returned by a read RPC."""

    __tablename__ = "secrets"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    value: Mapped[str] = mapped_column(String(8192))
    update_time: Mapped[datetime] = mapped_column(Timestamp)
    updated_by: Mapped[str] = mapped_column(String(128), default="")


class ChangeRow(Base):
    __tablename__ = "changes"

    revision: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)  # "team", "agent", "policy", ...
    key: Mapped[str] = mapped_column(String(512))
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    time: Mapped[datetime] = mapped_column(Timestamp)
    # Who made the change and in which request (from the request context; "" when unknown, e.g.
    # rows written before migration 0004). `action` is "create", "update" or "delete".
    action: Mapped[str] = mapped_column(String(16), default="", server_default="")
    actor_user: Mapped[str] = mapped_column(String(128), default="", server_default="")
    actor_agent: Mapped[str] = mapped_column(String(63), default="", server_default="")
    actor_service: Mapped[str] = mapped_column(String(63), default="", server_default="")
    auth_method: Mapped[str] = mapped_column(String(16), default="", server_default="")
    request_id: Mapped[str] = mapped_column(String(128), default="", server_default="")
    trace_id: Mapped[str] = mapped_column(String(32), default="", server_default="")


class AuditCursorRow(Base):
    """How far the audit feed has shipped the change log (one row, id 1); see audit_feed.py."""

    __tablename__ = "audit_cursor"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)
    update_time: Mapped[datetime] = mapped_column(Timestamp)


class JwtSettingsRow(Base):
    """How user tokens are verified; one row (id 1), since the mesh trusts one token issuer."""

    __tablename__ = "jwt_settings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    issuer: Mapped[str] = mapped_column(String(255))
    audience: Mapped[str] = mapped_column(String(255))
    public_key_pem: Mapped[str] = mapped_column(Text)
    update_time: Mapped[datetime] = mapped_column(Timestamp)
    # An OIDC issuer's keys instead of public_key_pem ("" when unused; migration 0006).
    jwks_url: Mapped[str] = mapped_column(String(2048), default="", server_default="")
    oidc_discovery_url: Mapped[str] = mapped_column(String(2048), default="", server_default="")
