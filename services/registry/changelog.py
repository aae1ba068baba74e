"""The change log: every registry mutation appends a revision; Watch reads it back.

A mixin of `store.Store` (which provides `engine` and `_sessions`). Three properties make
Watch gap-free:
- the change row is written in the same transaction as the entity, so a revision exists iff
  its change committed;
- revisions become visible in order: on PostgreSQL every writer takes one advisory lock
  before it draws its revision and holds it to commit (SQLite has a single writer anyway), so
  a watcher that has seen revision N never later finds a smaller one appear;
- commit listeners hear each revision right after its commit, so this process's watchers wake
  at once; other processes writing the same database are found by polling `last_revision`.
Deltas carry the entity as it is when read (at or after the change's revision); applying them
in order converges on the registry's state.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from casbin_sqlalchemy_adapter import CasbinRule
from sqlalchemy import Engine, delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.common.context import current
from services.common.errors import AlreadyExists
from services.registry import convert_rows as rows
from services.registry import domain as d
from services.registry.models import (
    AgentRow,
    ApiKeyRow,
    AuditCursorRow,
    ChangeRow,
    JwtSettingsRow,
    ModelRow,
    ProjectRow,
    SecretRow,
    TeamRow,
    ToolRow,
    UserRow,
)

log = logging.getLogger("harness.registry")

# PostgreSQL advisory lock key serializing registry writers from draw of revision to commit.
CHANGE_LOCK = 0x48_52_45_47_43_48_47  # "HREGCHG"
JWT_KEY = "jwt"

# Entities keyed by one column, in snapshot order (parents before children).
_KEYED = {
    "team": (TeamRow, TeamRow.name, rows.team),
    "project": (ProjectRow, ProjectRow.name, rows.project),
    "user": (UserRow, UserRow.name, rows.user),
    "api_key": (ApiKeyRow, ApiKeyRow.id, rows.api_key),
    "model": (ModelRow, ModelRow.name, rows.model),
    "agent": (AgentRow, AgentRow.name, rows.agent),
    "secret": (SecretRow, SecretRow.name, rows.secret_info),  # never the value
}


_ROW_TYPES: dict[str, type] = {
    **{kind: row_type for kind, (row_type, _, _) in _KEYED.items()},
    "tool": ToolRow,
    "jwt": JwtSettingsRow,
}


def tool_key(name: str, version: str) -> str:
    return f"{name}@{version}" if version else name


def _action(session: Session, kind: str, deleted: bool) -> str:
    if deleted:
        return "delete"
    if kind == "policy":  # a rule is its own key: recording it undeleted means it was added
        return "create"
    row_type = _ROW_TYPES.get(kind)
    if row_type is not None and any(isinstance(obj, row_type) for obj in session.new):
        return "create"
    return "update"


def policy_rule(r: CasbinRule) -> d.PolicyRule:
    values = (r.v0, r.v1, r.v2, r.v3, r.v4, r.v5)
    return d.PolicyRule(r.ptype, tuple(v for v in values if v is not None))


class ChangeLog:
    engine: Engine
    _sessions: sessionmaker

    def _init_changelog(self) -> None:
        self._listeners: list[Callable[[int], None]] = []
        self._listeners_lock = threading.Lock()

    # --- writing -------------------------------------------------------------------------

    def add_commit_listener(self, listener: Callable[[int], None]) -> Callable[[], None]:
        """Calls `listener(revision)` after each commit that recorded a change, in the committing
        (worker) thread; returns a function that removes it."""
        with self._listeners_lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._listeners_lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def _serialize(self, s: Session) -> None:
        """Takes the writers' lock (PostgreSQL) until this transaction ends; see module doc."""
        if self.engine.dialect.name == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CHANGE_LOCK})

    @contextmanager
    def _tx(self, conflict: str = "", *, serialize: bool = False) -> Iterator[Session]:
        """One transaction; a unique-key race at commit becomes AlreadyExists(`conflict`).

        `serialize` takes the writers' lock up front, for read-check-write sequences that must
        not interleave with other replicas (casbin rules). Listeners hear the revision after
        the commit, never for a rolled-back change.
        """
        with self._sessions() as session:
            try:
                if serialize:
                    self._serialize(session)
                yield session
                session.commit()
            except IntegrityError as exc:
                session.rollback()
                raise AlreadyExists(conflict or f"conflicting registry change: {exc.orig}") from exc
            revision = session.info.pop("revision", None)
        if revision is not None:
            self._notify(revision)

    transaction = _tx

    def _notify(self, revision: int) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(revision)
            except Exception:  # a broken watcher must not fail the write that already committed
                log.exception("registry commit listener failed")

    def _record(self, session: Session, kind: str, key: str, deleted: bool = False, action: str = "") -> int:
        """Appends a change in `session`'s transaction; returns its revision.

        The change names who made it: the request context's identity (the servicer runs store
        calls via asyncio.to_thread, which carries the context into the worker thread) and its
        request and trace id. `action` defaults to "delete" for deletions, "create" when the
        kind's row is new in this transaction (a policy rule added), else "update".
        """
        action = action or _action(session, kind, deleted)
        self._serialize(session)
        ctx = current()
        who = ctx.identity
        change = ChangeRow(
            kind=kind,
            key=key,
            deleted=deleted,
            time=d.now(),
            action=action,
            actor_user=who.user[:128],
            actor_agent=who.agent[:63],
            actor_service=who.service[:63],
            auth_method=(who.auth_method or ("mtls" if who.agent or who.service else ""))[:16],
            request_id=ctx.request_id[:128],
            trace_id=ctx.trace_id[:32],
        )
        session.add(change)
        session.flush()
        session.info["revision"] = change.revision
        return change.revision

    record = _record

    def compact_changes(self, keep: int) -> int:
        """Deletes all but the newest `keep` (>= 1) change rows; returns how many went.

        The newest row always stays, so SQLite (rowid = max + 1) never reuses a revision.
        Watchers resuming from before the new floor get a snapshot instead of deltas.
        """
        with self._tx(serialize=True) as s:
            head = s.scalar(select(func.max(ChangeRow.revision))) or 0
            result = s.execute(delete(ChangeRow).where(ChangeRow.revision <= head - max(keep, 1)))
            return result.rowcount or 0

    # --- the audit feed's outbox ---------------------------------------------------------

    def change_records(self, since: int, limit: int) -> list[ChangeRow]:
        """Up to `limit` raw change rows (with their actor) after `since`, oldest first."""
        with self._sessions() as s:
            stmt = select(ChangeRow).where(ChangeRow.revision > since).order_by(ChangeRow.revision)
            return list(s.scalars(stmt.limit(limit)))

    def audit_cursor(self) -> int:
        """The last revision shipped to the audit service (0 = none yet)."""
        with self._sessions() as s:
            row = s.get(AuditCursorRow, 1)
            return row.revision if row is not None else 0

    def set_audit_cursor(self, revision: int) -> int:
        """Moves the cursor forward to `revision` (never back: replicas may ship concurrently);
        returns the cursor now."""
        with self._sessions() as s, s.begin():
            row = s.get(AuditCursorRow, 1, with_for_update=True)
            if row is None:
                row = AuditCursorRow(id=1, revision=revision, update_time=d.now())
                s.add(row)
            elif revision > row.revision:
                row.revision, row.update_time = revision, d.now()
            return row.revision

    # --- reading -------------------------------------------------------------------------

    def last_revision(self, kind: str | None = None) -> int:
        with self._sessions() as s:
            stmt = select(func.max(ChangeRow.revision))
            if kind:
                stmt = stmt.where(ChangeRow.kind == kind)
            return s.scalar(stmt) or 0

    def change_window(self) -> tuple[int, int]:
        """(oldest, newest) revision still in the log; (0, 0) when it is empty."""
        with self._sessions() as s:
            low, high = s.execute(select(func.min(ChangeRow.revision), func.max(ChangeRow.revision))).one()
            return low or 0, high or 0

    def count_changes(self, kind: str, after: int, upto: int) -> int:
        """Changes of `kind` with after < revision <= upto."""
        with self._sessions() as s:
            stmt = select(func.count()).where(
                ChangeRow.kind == kind, ChangeRow.revision > after, ChangeRow.revision <= upto
            )
            return s.scalar(stmt) or 0

    def changes_since(self, since: int, limit: int) -> list[d.Change]:
        """Up to `limit` changes after `since`, oldest first, each with its entity as it is now."""
        with self._sessions() as s:
            stmt = select(ChangeRow).where(ChangeRow.revision > since).order_by(ChangeRow.revision)
            found = list(s.scalars(stmt.limit(limit)))
            entities = self._entities(s, [(r.kind, r.key) for r in found if not r.deleted])
            out = []
            for r in found:
                entity = None if r.deleted else entities.get((r.kind, r.key))
                # An entity missing without a delete record was removed by hand: say so.
                out.append(d.Change(r.revision, r.kind, r.key, r.deleted or entity is None, entity))
            return out

    def snapshot(self) -> tuple[int, list[d.Change]]:
        """(revision, every entity as a Change); the entities are at that revision or later."""
        with self._sessions() as s:
            if self.engine.dialect.name == "postgresql":
                # One MVCC snapshot for the revision and all tables (SQLite reads are not
                # wrapped; deltas after the revision then re-apply what it already holds).
                s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            head = s.scalar(select(func.max(ChangeRow.revision))) or 0
            out: list[d.Change] = []
            for kind, (row_type, column, conv) in _KEYED.items():
                if kind == "agent":  # agents refer to models and tools: send those first
                    for t in s.scalars(select(ToolRow).order_by(ToolRow.name, ToolRow.version)):
                        out.append(d.Change(head, "tool", tool_key(t.name, t.version), False, rows.tool(t)))
                for r in s.scalars(select(row_type).order_by(column)):
                    out.append(d.Change(head, kind, getattr(r, column.key), False, conv(r)))
            for r in s.scalars(select(CasbinRule).order_by(CasbinRule.id)):
                rule = policy_rule(r)
                out.append(d.Change(head, "policy", rule.csv(), False, rule))
            jwt = s.get(JwtSettingsRow, 1)
            if jwt is not None:
                out.append(d.Change(head, "jwt", JWT_KEY, False, rows.jwt(jwt)))
            return head, out

    @staticmethod
    def _entities(s: Session, keys: list[tuple[str, str]]) -> dict[tuple[str, str], d.Entity]:
        """Current entities for (kind, key) pairs, a few queries per batch (not one per key)."""
        wanted: dict[str, set[str]] = defaultdict(set)
        for kind, key in keys:
            wanted[kind].add(key)
        out: dict[tuple[str, str], d.Entity] = {}
        for kind, names in wanted.items():
            if kind in _KEYED:
                row_type, column, conv = _KEYED[kind]
                for r in s.scalars(select(row_type).where(column.in_(names))):
                    out[(kind, getattr(r, column.key))] = conv(r)
            elif kind == "tool":
                stmt = select(ToolRow).where(ToolRow.name.in_({n.partition("@")[0] for n in names}))
                for t in s.scalars(stmt):
                    if (key := tool_key(t.name, t.version)) in names:
                        out[("tool", key)] = rows.tool(t)
            elif kind == "policy":  # a rule is its own key
                out.update({("policy", n): d.parse_rule_csv(n) for n in names})
            elif kind == "jwt" and (jwt := s.get(JwtSettingsRow, 1)) is not None:
                out[("jwt", JWT_KEY)] = rows.jwt(jwt)
        return out
