"""The pool's tables (what its Alembic migrations must match, services/pool/migrate.py): the
deployment claims and the outbox of admin changes waiting to reach the audit log."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Float, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class _Base(DeclarativeBase):
    pass


class ClaimRow(_Base):
    __tablename__ = "pool_claims"

    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(String(256), primary_key=True)
    replicas: Mapped[int] = mapped_column(Integer)
    idle_ttl_s: Mapped[float] = mapped_column(Float, default=0.0)
    # Per model, kept on each of its rows: a cold deployment stays cold across a restart.
    scaled_to_zero: Mapped[bool] = mapped_column(Boolean, default=False)


class AdminChangeRow(_Base):
    """One change made through the pool's API (admin_changes.py); shipped to the audit log as
    an ADMIN_CHANGE event. `details` is JSON of what changed, never a secret."""

    __tablename__ = "pool_admin_changes"
    __table_args__ = (Index("ix_pool_admin_changes_audit", "audit_shipped_us", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    time_us: Mapped[int] = mapped_column(BigInteger)
    object: Mapped[str] = mapped_column(Text)  # endpoint:<name>, deployment:<model>, scaling
    action: Mapped[str] = mapped_column(String(32))  # register, deregister, deploy, undeploy, apply
    actor_user: Mapped[str] = mapped_column(Text, default="")
    actor_agent: Mapped[str] = mapped_column(Text, default="")
    actor_service: Mapped[str] = mapped_column(Text, default="")
    auth_method: Mapped[str] = mapped_column(String(32), default="")
    request_id: Mapped[str] = mapped_column(Text, default="")
    trace_id: Mapped[str] = mapped_column(String(64), default="")
    details: Mapped[str] = mapped_column(Text, default="{}")
    audit_shipped_us: Mapped[int] = mapped_column(BigInteger, default=0)  # 0 = not acknowledged yet


# The models the pool's migrations must match (services/pool/migrate.py).
metadata = _Base.metadata
