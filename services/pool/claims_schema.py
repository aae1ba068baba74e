"""The pool's claim table (what its Alembic migrations must match, services/pool/migrate.py)."""

from __future__ import annotations

from sqlalchemy import Boolean, Float, Integer, String
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


# The models the pool's migrations must match (services/pool/migrate.py).
metadata = _Base.metadata
