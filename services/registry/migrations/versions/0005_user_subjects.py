"""Casbin subjects are namespaced: a user is `user:<name>`, so a token's subject can never be
read as a role (`role:...`) or an agent (`agent:...`). Rules written with a bare user name get
the prefix; each rewrite is recorded in the change log (old rule deleted, new one added) so
routers that resume their watch from an older revision replace their copy too.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PREFIXES = ("user:", "role:", "agent:")
_RULES = sa.table("casbin_rule", sa.column("id"), sa.column("ptype"), *(sa.column(f"v{i}") for i in range(6)))
_CHANGES = sa.table(
    "changes",
    sa.column("kind"),
    sa.column("key"),
    sa.column("deleted"),
    sa.column("time"),
    sa.column("action"),
    sa.column("actor_service"),
)


def _values(row) -> list[str]:
    values = [getattr(row, f"v{i}") for i in range(6)]
    while values and not values[-1]:
        values.pop()
    return values


def _rewrite(to_user: bool) -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(_RULES).where(_RULES.c.ptype.in_(("p", "g")))).all()
    now = datetime.now(UTC)
    for row in rows:
        subject = row.v0 or ""
        if to_user and (not subject or subject.startswith(_PREFIXES)):
            continue
        if not to_user and not subject.startswith("user:"):
            continue
        new_subject = "user:" + subject if to_user else subject.removeprefix("user:")
        old = _values(row)
        new = [new_subject, *old[1:]]
        bind.execute(sa.update(_RULES).where(_RULES.c.id == row.id).values(v0=new_subject))
        for values, deleted in ((old, True), (new, False)):
            bind.execute(
                sa.insert(_CHANGES).values(
                    kind="policy",
                    key=", ".join((row.ptype, *values)),
                    deleted=deleted,
                    time=now,
                    action="delete" if deleted else "create",
                    actor_service="registry-migration",
                )
            )


def upgrade() -> None:
    _rewrite(to_user=True)


def downgrade() -> None:
    _rewrite(to_user=False)
