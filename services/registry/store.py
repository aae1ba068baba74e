"""The registry store: domain objects in and out, SQLite or PostgreSQL chosen by URL.

Synchronous SQLAlchemy on purpose: the servicer runs each call in a worker thread
(`asyncio.to_thread`), which keeps one code path for both databases and for the casbin
adapter (which is synchronous too). Errors are the shared domain exceptions, so the same
messages reach gRPC callers, the CLI and the seeder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.common.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
)
from services.registry import convert_rows as rows
from services.registry import domain as d
from services.registry import limits, migrate
from services.registry.agents import AgentStore
from services.registry.api_keys import ApiKeyStore
from services.registry.changelog import JWT_KEY, ChangeLog, tool_key
from services.registry.domain import now
from services.registry.engine import make_engine
from services.registry.models import (
    JwtSettingsRow,
    ModelRow,
    ProjectRow,
    TeamRow,
    ToolRow,
    UserRow,
)
from services.registry.removal import RemovalStore
from services.registry.secrets import SecretStore

T = TypeVar("T")
TOOL_ENDPOINT_SCHEMES = ("http://", "https://", "mcp+http://", "mcp+https://")


class Store(AgentStore, ApiKeyStore, RemovalStore, SecretStore, ChangeLog):
    """Tenancy, catalogs and JWT settings here; agents, versions and traffic in AgentStore; API
    keys in ApiKeyStore; deletions in RemovalStore; transactions, the change log and what Watch reads
    in ChangeLog."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        try:
            migrate.open_schema(self.engine)  # the schema follows the code, or is checked (see migrate.py)
        except BaseException:
            self.engine.dispose()
            raise
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._init_changelog()

    def close(self) -> None:
        self.engine.dispose()

    @staticmethod
    def _page(s: Session, stmt, page: d.Page, conv: Callable[[object], T]) -> tuple[list[T], int | None]:
        found = list(s.scalars(stmt.offset(page.offset).limit(page.size + 1)))
        more = len(found) > page.size
        return [conv(r) for r in found[: page.size]], (page.offset + page.size if more else None)

    @staticmethod
    def _need(s: Session, row_type: type, key, what: str, hint: str):
        """The row for a reference; an empty reference is malformed, a missing one NotFound."""
        if not key:
            raise InvalidArgument(f"{what} is required")
        row = s.get(row_type, key)
        if row is None:
            raise NotFound(f"{what} {key!r} does not exist; {hint}")
        return row

    need = _need  # for Policy, which checks a rule's project inside its own transaction

    # --- tenancy -------------------------------------------------------------------------

    def create_team(self, team: d.Team) -> d.Team:
        d.check_label("team", team.name)
        limits.check_team(team)
        with self._tx(f"team {team.name!r} already exists") as s:
            if s.get(TeamRow, team.name):
                raise AlreadyExists(f"team {team.name!r} already exists; pick another name")
            row = TeamRow(name=team.name, display_name=team.display_name, create_time=now())
            s.add(row)
            self._record(s, "team", team.name)
            return rows.team(row)

    def list_teams(
        self, page: d.Page, projects: frozenset[str] | None = None
    ) -> tuple[list[d.Team], int | None]:
        """Teams; with `projects`, only the teams owning one of them."""
        stmt = select(TeamRow).order_by(TeamRow.name)
        if projects is not None:
            owners = select(ProjectRow.team).where(ProjectRow.name.in_(sorted(projects)))
            stmt = stmt.where(TeamRow.name.in_(owners))
        with self._sessions() as s:
            return self._page(s, stmt, page, rows.team)

    def create_project(self, project: d.Project) -> d.Project:
        d.check_label("project", project.name)
        limits.check_project(project)
        with self._tx(f"project {project.name!r} already exists") as s:
            self._need(s, TeamRow, project.team, "team", "create the team first: harness teams create NAME")
            if s.get(ProjectRow, project.name):
                raise AlreadyExists(f"project {project.name!r} already exists; pick another name")
            row = ProjectRow(
                name=project.name, team=project.team, display_name=project.display_name, create_time=now()
            )
            s.add(row)
            self._record(s, "project", project.name)
            return rows.project(row)

    def list_projects(
        self, team: str, page: d.Page, projects: frozenset[str] | None = None
    ) -> tuple[list[d.Project], int | None]:
        """Projects (of `team` when given); with `projects`, only those."""
        with self._sessions() as s:
            stmt = select(ProjectRow).order_by(ProjectRow.name)
            if team:
                stmt = stmt.where(ProjectRow.team == team)
            if projects is not None:
                stmt = stmt.where(ProjectRow.name.in_(sorted(projects)))
            return self._page(s, stmt, page, rows.project)

    def user_team_projects(self, name: str) -> tuple[str, frozenset[str]]:
        """A user's team and its projects ("" and none for an unknown or teamless user)."""
        with self._sessions() as s:
            team = s.scalar(select(UserRow.team).where(UserRow.name == name)) or ""
            if not team:
                return "", frozenset()
            return team, frozenset(s.scalars(select(ProjectRow.name).where(ProjectRow.team == team)))

    def create_user(self, user: d.User) -> d.User:
        d.check_user_name(user.name)
        d.check_rate_limits(f"user {user.name!r}", user.rpm_limit, user.tpm_limit)
        limits.check_user(user)
        with self._tx(f"user {user.name!r} already exists") as s:
            if user.team:
                self._need(s, TeamRow, user.team, "team", "create the team first or leave team empty")
            if s.get(UserRow, user.name):
                raise AlreadyExists(f"user {user.name!r} already exists; pick another name")
            row = UserRow(
                name=user.name,
                display_name=user.display_name,
                email=user.email,
                team=user.team or None,
                roles=list(user.roles),
                create_time=now(),
                rpm_limit=user.rpm_limit,
                tpm_limit=user.tpm_limit,
            )
            s.add(row)
            self._record(s, "user", user.name)
            return rows.user(row)

    def get_user(self, name: str) -> d.User:
        with self._sessions() as s:
            return rows.user(
                self._need(
                    s,
                    UserRow,
                    name,
                    "user",
                    "check the name (`harness users list`) or create it: harness users create NAME --team TEAM",
                )
            )

    def set_user_limits(self, name: str, rpm_limit: int, tpm_limit: int) -> d.User:
        """Replaces a user's rate limits (0 = unlimited); the same values again record no change."""
        d.check_rate_limits(f"user {name!r}", rpm_limit, tpm_limit)
        limits.check_rate_limits(f"user {name!r}", rpm_limit, tpm_limit)
        with self._tx() as s:
            row = self._need(
                s,
                UserRow,
                name,
                "user",
                "check the name (`harness users list`) or create it: harness users create NAME --team TEAM",
            )
            if (row.rpm_limit, row.tpm_limit) != (rpm_limit, tpm_limit):
                row.rpm_limit, row.tpm_limit = rpm_limit, tpm_limit
                self._record(s, "user", name)
            return rows.user(row)

    def list_users(self, team: str, page: d.Page) -> tuple[list[d.User], int | None]:
        with self._sessions() as s:
            stmt = select(UserRow).order_by(UserRow.name)
            if team:
                stmt = stmt.where(UserRow.team == team)
            return self._page(s, stmt, page, rows.user)

    # --- catalogs ------------------------------------------------------------------------

    def register_model(self, model: d.Model) -> d.Model:
        d.check_catalog_name("model", model.name)
        for field_name in ("parameters_b", "memory_gib", "context_length"):
            if getattr(model, field_name) < 0:
                raise InvalidArgument(
                    f"model {field_name} is {getattr(model, field_name)}; it must not be negative"
                )
        limits.check_model(model)
        with self._tx(f"model {model.name!r} already exists") as s:
            if s.get(ModelRow, model.name):
                raise AlreadyExists(f"model {model.name!r} is already in the catalog; pick another name")
            row = rows.model_row(model)
            s.add(row)
            self._record(s, "model", model.name)
            return rows.model(row)

    def list_models(self, page: d.Page) -> tuple[list[d.Model], int | None]:
        with self._sessions() as s:
            return self._page(s, select(ModelRow).order_by(ModelRow.name), page, rows.model)

    def register_tool(self, tool: d.Tool) -> d.Tool:
        d.check_catalog_name("tool", tool.name)
        if tool.version:
            d.check_version_label(tool.version, "tool version")  # no '@': refs are name@version
        if tool.endpoint and not tool.endpoint.startswith(TOOL_ENDPOINT_SCHEMES):
            raise InvalidArgument(
                f"tool endpoint {tool.endpoint!r} must be an http:// or https:// URL (HTTP JSON), "
                "or mcp+http:// or mcp+https:// (an MCP server)"
            )
        limits.check_tool(tool)
        names = [a.name for a in tool.actions]
        if not names or len(set(names)) != len(names) or not all(names):
            raise InvalidArgument(f"tool {tool.name!r} needs at least one action, each with a unique name")
        for action in tool.actions:
            d.check_choice(f"risk of action {action.name!r}", action.risk, d.RISK_CLASSES, allow_empty=False)
            if action.cache_ttl_s < 0:
                raise InvalidArgument(
                    f"cache_ttl_s of action {action.name!r} is {action.cache_ttl_s}; it must not be negative"
                )
        label = tool_key(tool.name, tool.version)
        with self._tx(f"tool {label!r} already exists") as s:
            if s.get(ToolRow, (tool.name, tool.version)):
                raise AlreadyExists(f"tool {label!r} is already in the catalog; register a new version")
            if tool.credential and not self.secret_exists(s, tool.credential):
                raise NotFound(
                    f"tool {label!r} names credential {tool.credential!r}, which is not a stored secret; "
                    f"set it first with `harness secrets set {tool.credential}`"
                )
            row = rows.tool_row(tool)
            s.add(row)
            self._record(s, "tool", label)
            return rows.tool(row)

    def list_tools(self, page: d.Page) -> tuple[list[d.Tool], int | None]:
        with self._sessions() as s:
            stmt = select(ToolRow).order_by(ToolRow.name, ToolRow.version)
            return self._page(s, stmt, page, rows.tool)

    # --- JWT verification settings ------------------------------------------------------

    def set_jwt_settings(self, settings: d.JwtSettings) -> d.JwtSettings:
        """Replaces the settings; setting the same values again records no change."""
        limits.check_jwt(settings)
        pem = settings.public_key_pem.strip() + "\n" if settings.public_key_pem.strip() else ""
        jwks, discovery = settings.jwks_url, settings.oidc_discovery_url
        d.check_jwt_settings(settings.issuer, settings.audience, pem, jwks, discovery)
        wanted = (settings.issuer, settings.audience, pem, jwks, discovery)
        with self._tx("JWT settings were changed concurrently; read them again and retry") as s:
            row = s.get(JwtSettingsRow, 1)
            if row is None:
                row = JwtSettingsRow(id=1)
                s.add(row)
            elif (
                row.issuer,
                row.audience,
                row.public_key_pem,
                row.jwks_url,
                row.oidc_discovery_url,
            ) == wanted:
                return rows.jwt(row)
            row.issuer, row.audience, row.public_key_pem, row.jwks_url, row.oidc_discovery_url = wanted
            row.update_time = now()
            self._record(s, "jwt", JWT_KEY)
            return rows.jwt(row)

    def get_jwt_settings(self) -> d.JwtSettings:
        with self._sessions() as s:
            row = s.get(JwtSettingsRow, 1)
            if row is None:
                raise NotFound("JWT settings are not set; `harness up` sets them for the local stack")
            return rows.jwt(row)
