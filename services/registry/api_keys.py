"""API-key part of the registry store: keys scoped to a project (optionally bound to one of its
agents), stored as hashes, authenticated by their secret.

A mixin of `store.Store` (which provides `_tx`, `_sessions`, `_record`, `_need`, `_page`), kept
apart so each file stays readable.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime

from sqlalchemy import select

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from services.registry import convert_rows as rows
from services.registry import domain as d
from services.registry import limits
from services.registry.domain import now
from services.registry.models import AgentRow, ApiKeyRow, ProjectRow, UserRow

KEY_PREFIX = "hk"


def _check_bindable(agent_row, agent: str, project: str) -> None:
    """A key may be bound to an agent of its own project that accepts API keys."""
    if agent_row is None:
        raise NotFound(f"no agent {agent!r} to bind the key to; `harness agents list` lists them")
    if agent_row.project != project:
        raise InvalidArgument(
            f"agent {agent!r} belongs to project {agent_row.project!r}; a key bound to it must be scoped to "
            "that project"
        )
    if not agent_row.api_key_auth:
        raise FailedPrecondition(
            f"agent {agent!r} does not accept API keys in place of its certificate; an admin allows it "
            f"first with `harness agents api-key-auth {agent} on` (audited)"
        )


def hash_secret(secret: str) -> str:
    # Secrets carry 256 random bits, so a plain sha256 cannot be brute-forced; no KDF needed.
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeyStore:
    def create_api_key(
        self,
        user: str,
        project: str,
        description: str = "",
        expire_time: datetime | None = None,
        agent: str = "",
    ) -> tuple[d.ApiKey, str]:
        """Returns the key and its secret `hk_<id>_<random>`; only the secret's hash is kept."""
        limits.check_length("API key description", description, limits.API_KEY_DESCRIPTION_CHARS)
        if expire_time is not None and rows.utc(expire_time) <= now():
            raise InvalidArgument("expire_time is in the past; give a future time or leave it unset")
        key_id = secrets.token_hex(8)
        secret = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        with self._tx() as s:
            self._need(
                s, UserRow, user, "user", "create the user first: harness users create NAME --team TEAM"
            )
            self._need(
                s,
                ProjectRow,
                project,
                "project",
                "create the project first: harness projects create NAME --team TEAM",
            )
            if agent:
                _check_bindable(s.get(AgentRow, agent), agent, project)
            row = ApiKeyRow(
                id=key_id,
                user=user,
                project=project,
                description=description,
                secret_sha256=hash_secret(secret),
                create_time=now(),
                expire_time=expire_time,
                agent=agent,
            )
            s.add(row)
            self._record(s, "api_key", key_id)
            return rows.api_key(row), secret

    def list_api_keys(
        self, user: str, page: d.Page, projects: frozenset[str] | None = None
    ) -> tuple[list[d.ApiKey], int | None]:
        """Keys (of `user` when given); with `projects`, only keys scoped to one of them."""
        with self._sessions() as s:
            stmt = select(ApiKeyRow).order_by(ApiKeyRow.create_time, ApiKeyRow.id)
            if user:
                stmt = stmt.where(ApiKeyRow.user == user)
            if projects is not None:
                stmt = stmt.where(ApiKeyRow.project.in_(sorted(projects)))
            return self._page(s, stmt, page, rows.api_key)

    def revoke_api_key(self, key_id: str) -> d.ApiKey:
        with self._tx() as s:
            row = self._need(
                s, ApiKeyRow, key_id, "API key", "list keys with `harness keys list --owner USER`"
            )
            if row.revoke_time is None:  # revoking twice keeps the first time
                row.revoke_time = now()
                self._record(s, "api_key", key_id)
            return rows.api_key(row)

    def authenticate_api_key(self, secret: str) -> tuple[d.ApiKey, d.User]:
        """The key and its user; Unauthenticated for unknown, revoked or expired secrets."""
        prefix, _, rest = secret.partition("_")
        key_id, _, _random = rest.partition("_")
        if prefix != KEY_PREFIX or not key_id:
            raise Unauthenticated(
                "API key is malformed: expected hk_<id>_<secret> as issued by `harness keys create`"
            )
        with self._sessions() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None or not hmac.compare_digest(row.secret_sha256, hash_secret(secret)):
                raise Unauthenticated(
                    "API key is not valid; ask an admin for a new one (harness keys create USER --project PROJECT)"
                )
            if row.revoke_time is not None:
                raise Unauthenticated(f"API key {key_id} was revoked; ask an admin for a new one")
            if row.expire_time is not None and rows.utc(row.expire_time) <= now():
                raise Unauthenticated(f"API key {key_id} has expired; ask an admin for a new one")
            user = self._need(s, UserRow, row.user, "user", "the key's user was removed")
            if row.agent:
                bound = s.get(AgentRow, row.agent)
                if bound is None or not bound.api_key_auth:
                    raise Unauthenticated(
                        f"API key {key_id} is bound to agent {row.agent!r}, which does not accept API keys "
                        f"(now): an admin allows it with `harness agents api-key-auth {row.agent} on`"
                    )
            return rows.api_key(row), rows.user(user)
