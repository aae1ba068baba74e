"""Durable deployment claims: who asked for which model, how many replicas, and whether it is
scaled to zero. A restarted pool reads them back and re-places what is missing (models still
loaded on the endpoints are adopted), so an accepted Deploy survives a pool restart.

SQLite by default (a file under the stack's state directory), PostgreSQL by URL. Writes are
small and rare (deploys, undeploys, scale-to-zero), never on the request path. The schema comes
from Alembic migrations (services/pool/migrate.py), run whenever the store opens a database.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from services.common.db import make_engine
from services.pool import migrate
from services.pool.claims_schema import ClaimRow


@dataclass(frozen=True)
class StoredClaim:
    model: str
    owner: str
    replicas: int
    idle_ttl_s: float
    scaled_to_zero: bool


class ClaimStore:
    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        try:
            migrate.open_schema(self.engine)  # the schema follows the code, or is checked (see migrate.py)
        except BaseException:
            self.engine.dispose()
            raise

    def load(self) -> list[StoredClaim]:
        with Session(self.engine) as s:
            rows = s.scalars(select(ClaimRow).order_by(ClaimRow.model, ClaimRow.owner))
            return [StoredClaim(r.model, r.owner, r.replicas, r.idle_ttl_s, r.scaled_to_zero) for r in rows]

    def put(self, model: str, owner: str, replicas: int, idle_ttl_s: float) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(ClaimRow, (model, owner))
            if row is None:
                s.add(ClaimRow(model=model, owner=owner, replicas=replicas, idle_ttl_s=idle_ttl_s))
            else:
                row.replicas, row.idle_ttl_s = replicas, idle_ttl_s
            s.execute(update(ClaimRow).where(ClaimRow.model == model).values(scaled_to_zero=False))

    def remove(self, model: str, owner: str | None = None) -> None:
        """Drops one owner's claim, or every claim on the model when `owner` is None."""
        with Session(self.engine) as s, s.begin():
            stmt = delete(ClaimRow).where(ClaimRow.model == model)
            if owner is not None:
                stmt = stmt.where(ClaimRow.owner == owner)
            s.execute(stmt)

    def set_scaled_to_zero(self, model: str, cold: bool) -> None:
        with Session(self.engine) as s, s.begin():
            s.execute(update(ClaimRow).where(ClaimRow.model == model).values(scaled_to_zero=cold))

    def close(self) -> None:
        self.engine.dispose()
