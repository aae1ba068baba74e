"""Secrets: values the routers send to tools' endpoints (an upstream API token), kept by name.

A tool names its credential (`Tool.credential`); only the routers read the value
(`RevealSecret`), when they call the tool. No other read returns it, and the change log, the
Watch stream and the audit feed carry the name and who set it, never the value.
"""

from __future__ import annotations

from sqlalchemy import select

from services.common.context import current
from services.common.errors import FailedPrecondition, NotFound
from services.registry import convert_rows as rows
from services.registry import domain as d
from services.registry import limits
from services.registry.models import SecretRow, ToolRow


class SecretStore:
    def set_secret(self, name: str, value: str) -> d.SecretInfo:
        d.check_label("secret", name)
        limits.check_secret_value(name, value)
        who = current().identity
        with self._tx(f"secret {name!r} was set concurrently; retry") as s:  # type: ignore[attr-defined]
            row = s.get(SecretRow, name)
            if row is None:
                row = SecretRow(name=name)
                s.add(row)
            row.value, row.update_time = value, d.now()
            row.updated_by = (who.user or who.service or who.agent)[:128]
            self._record(s, "secret", name)  # type: ignore[attr-defined]
            return rows.secret_info(row)

    def list_secrets(self) -> list[d.SecretInfo]:
        with self._sessions() as s:  # type: ignore[attr-defined]
            return [rows.secret_info(r) for r in s.scalars(select(SecretRow).order_by(SecretRow.name))]

    def delete_secret(self, name: str) -> None:
        with self._tx() as s:  # type: ignore[attr-defined]
            row = s.get(SecretRow, name)
            if row is None:
                raise NotFound(f"no secret {name!r}; `harness secrets list` lists them")
            users = [
                f"{t.name}@{t.version}" for t in s.scalars(select(ToolRow).where(ToolRow.credential == name))
            ]
            if users:
                raise FailedPrecondition(
                    f"secret {name!r} is the credential of tools {sorted(users)}; delete those versions first"
                )
            s.delete(row)
            self._record(s, "secret", name, deleted=True)  # type: ignore[attr-defined]

    def reveal_secret(self, name: str) -> str:
        with self._sessions() as s:  # type: ignore[attr-defined]
            row = s.get(SecretRow, name)
            if row is None:
                raise NotFound(f"no secret {name!r}: set it with `harness secrets set {name}`")
            return row.value

    def secret_exists(self, session, name: str) -> bool:
        return session.get(SecretRow, name) is not None
