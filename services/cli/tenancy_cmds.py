"""`harness teams|projects|users|keys ...`: tenancy and identities."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from harness.registry.v1 import registry_pb2 as pb

from services.cli import output
from services.cli.base import Ctx, UsageError, parse_duration
from services.cli.delete_cmds import tenancy_deletes


def parse_expiry(text: str, now: datetime | None = None) -> Timestamp:
    """`30d`, `12h`, `90m`, `2w` from now, or an ISO-8601 time (UTC when no zone is given)."""
    now = now or datetime.now(UTC)
    ahead = parse_duration(text)
    if ahead is not None:
        at = now + ahead
    else:
        try:
            at = datetime.fromisoformat(text.strip())
        except ValueError:
            raise UsageError(
                f"--expires {text!r}: use a duration (30d, 12h, 90m, 2w) or an ISO time (2030-01-31T00:00)"
            ) from None
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
    if at <= now:
        raise UsageError(f"--expires {text!r} is in the past")
    ts = Timestamp()
    ts.FromDatetime(at.astimezone(UTC))
    return ts


# --- teams and projects ---------------------------------------------------------------------


def teams_list(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = ctx.list_all("ListTeams", pb.ListTeamsRequest(), "teams")
    rows = lambda r: [[t.name, t.display_name, output.when(t.create_time)] for t in r.teams]  # noqa: E731
    return ctx.emit(resp, lambda r: output.table(("NAME", "DISPLAY NAME", "CREATED"), rows(r)))


def teams_create(ctx: Ctx, args: argparse.Namespace) -> int:
    team = pb.Team(name=args.name, display_name=args.display_name or "")
    resp = ctx.call("CreateTeam", pb.CreateTeamRequest(team=team))
    return ctx.emit(resp, lambda r: print(f"created team {r.team.name}"))


def projects_list(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = ctx.list_all("ListProjects", pb.ListProjectsRequest(team=args.team or ""), "projects")

    def human(r) -> None:
        rows = [[p.name, p.team, p.display_name, output.when(p.create_time)] for p in r.projects]
        output.table(("NAME", "TEAM", "DISPLAY NAME", "CREATED"), rows)

    return ctx.emit(resp, human)


def projects_create(ctx: Ctx, args: argparse.Namespace) -> int:
    project = pb.Project(name=args.name, team=args.team, display_name=args.display_name or "")
    resp = ctx.call("CreateProject", pb.CreateProjectRequest(project=project))
    return ctx.emit(resp, lambda r: print(f"created project {r.project.name} in team {r.project.team}"))


# --- users ----------------------------------------------------------------------------------


def _limit(value: int) -> str:
    return str(value) if value else "unlimited"


def _user_rows(users) -> list[list[object]]:
    return [
        [u.name, u.team, ",".join(u.roles), _limit(u.rpm_limit), _limit(u.tpm_limit), u.email, u.display_name]
        for u in users
    ]


USER_HEADERS = ("NAME", "TEAM", "ROLES", "RPM", "TPM", "EMAIL", "DISPLAY NAME")


def users_list(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = ctx.list_all("ListUsers", pb.ListUsersRequest(team=args.team or ""), "users")
    return ctx.emit(resp, lambda r: output.table(USER_HEADERS, _user_rows(r.users)))


def users_get(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = ctx.call("GetUser", pb.GetUserRequest(name=args.name))
    return ctx.emit(resp, lambda r: output.table(USER_HEADERS, _user_rows([r.user])))


def users_create(ctx: Ctx, args: argparse.Namespace) -> int:
    user = pb.User(
        name=args.name,
        display_name=args.display_name or "",
        email=args.email or "",
        team=args.team or "",
        roles=args.role,
        rpm_limit=args.rpm,
        tpm_limit=args.tpm,
    )
    resp = ctx.call("CreateUser", pb.CreateUserRequest(user=user))
    return ctx.emit(resp, lambda r: output.table(USER_HEADERS, _user_rows([r.user])))


def users_limits(ctx: Ctx, args: argparse.Namespace) -> int:
    """Sets rpm and/or tpm; a limit not given keeps its current value (0 = unlimited)."""
    if args.rpm is None and args.tpm is None:
        raise UsageError("users limits: give --rpm and/or --tpm (0 = unlimited)")
    rpm, tpm = args.rpm, args.tpm
    if rpm is None or tpm is None:
        current = ctx.call("GetUser", pb.GetUserRequest(name=args.name)).user
        rpm = current.rpm_limit if rpm is None else rpm
        tpm = current.tpm_limit if tpm is None else tpm
    resp = ctx.call("SetUserLimits", pb.SetUserLimitsRequest(user=args.name, rpm_limit=rpm, tpm_limit=tpm))
    return ctx.emit(resp, lambda r: output.table(USER_HEADERS, _user_rows([r.user])))


# --- API keys -------------------------------------------------------------------------------


def _key_rows(keys) -> list[list[object]]:
    return [
        [
            k.id,
            k.user,
            k.project,
            "revoked" if k.HasField("revoke_time") else "active",
            output.when(k.expire_time) or "never",
            output.when(k.create_time),
            k.description,
        ]
        for k in keys
    ]


KEY_HEADERS = ("ID", "USER", "PROJECT", "STATUS", "EXPIRES", "CREATED", "DESCRIPTION")


def keys_create(ctx: Ctx, args: argparse.Namespace) -> int:
    req = pb.CreateApiKeyRequest(
        user=args.owner, project=args.project, description=args.description or "", agent=args.agent or ""
    )
    if args.expires:
        req.expire_time.CopyFrom(parse_expiry(args.expires))
    resp = ctx.call("CreateApiKey", req)

    def human(r) -> None:
        output.table(KEY_HEADERS, _key_rows([r.key]))
        print(f"\nsecret: {r.secret}")
        print("This secret is shown only now; store it. Send it as the x-api-key header.", file=sys.stderr)
        if r.key.agent:
            print(f"It is bound to agent {r.key.agent}: it acts only as that agent, with or without its "
                  "certificate.", file=sys.stderr)  # fmt: skip

    return ctx.emit(resp, human)


def keys_list(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = ctx.list_all("ListApiKeys", pb.ListApiKeysRequest(user=args.owner or ""), "keys")
    return ctx.emit(resp, lambda r: output.table(KEY_HEADERS, _key_rows(r.keys)))


def keys_revoke(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = ctx.call("RevokeApiKey", pb.RevokeApiKeyRequest(id=args.id))
    return ctx.emit(resp, lambda r: print(f"revoked key {r.key.id} at {output.when(r.key.revoke_time)}"))


# --- parser ---------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    teams = sub.add_parser("teams", help="teams: list, create, delete")
    t = teams.add_subparsers(dest="verb", required=True, metavar="ACTION")
    t.add_parser("list", parents=[common], help="list teams").set_defaults(handler=teams_list)
    p = t.add_parser("create", parents=[common], help="create a team")
    p.add_argument("name")
    p.add_argument("--display-name")
    p.set_defaults(handler=teams_create)

    groups = {"teams": t}
    projects = sub.add_parser("projects", help="projects: list, create, delete")
    t = projects.add_subparsers(dest="verb", required=True, metavar="ACTION")
    groups["projects"] = t
    p = t.add_parser("list", parents=[common], help="list projects")
    p.add_argument("--team", help="only this team")
    p.set_defaults(handler=projects_list)
    p = t.add_parser("create", parents=[common], help="create a project in a team")
    p.add_argument("name")
    p.add_argument("--team", required=True)
    p.add_argument("--display-name")
    p.set_defaults(handler=projects_create)

    users = sub.add_parser("users", help="users: list, get, create, limits, delete")
    t = users.add_subparsers(dest="verb", required=True, metavar="ACTION")
    groups["users"] = t
    p = t.add_parser("list", parents=[common], help="list users")
    p.add_argument("--team", help="only this team")
    p.set_defaults(handler=users_list)
    p = t.add_parser("get", parents=[common], help="one user")
    p.add_argument("name")
    p.set_defaults(handler=users_get)
    p = t.add_parser("create", parents=[common], help="create a user")
    p.add_argument("name", help="unique id; equals the JWT sub claim")
    p.add_argument("--team")
    p.add_argument("--email")
    p.add_argument("--display-name")
    p.add_argument("--role", action="append", default=[], help="global role, e.g. admin (repeat)")
    p.add_argument("--rpm", type=int, default=0, help="requests per minute (0 = unlimited)")
    p.add_argument("--tpm", type=int, default=0, help="tokens per minute (0 = unlimited)")
    p.set_defaults(handler=users_create)
    p = t.add_parser("limits", parents=[common], help="set a user's rate limits (admin)")
    p.add_argument("name")
    p.add_argument("--rpm", type=int, help="requests per minute (0 = unlimited; default: keep)")
    p.add_argument("--tpm", type=int, help="tokens per minute (0 = unlimited; default: keep)")
    p.set_defaults(handler=users_limits)

    tenancy_deletes(groups, common)

    keys = sub.add_parser("keys", help="API keys: create (secret shown once), list, revoke")
    t = keys.add_subparsers(dest="verb", required=True, metavar="ACTION")
    p = t.add_parser("create", parents=[common], help="create a key; prints its secret once")
    p.add_argument("owner", help="user the key acts as")
    p.add_argument("--project", required=True, help="project the key is scoped to")
    p.add_argument("--description")
    p.add_argument("--expires", help="30d, 12h, 90m, 2w or an ISO time (default never)")
    p.add_argument(
        "--agent", help="bind the key to this agent (it must allow it: harness agents api-key-auth AGENT on)"
    )
    p.set_defaults(handler=keys_create)
    p = t.add_parser("list", parents=[common], help="list keys (never secrets)")
    p.add_argument("--owner", help="only keys of this user")
    p.set_defaults(handler=keys_list)
    p = t.add_parser("revoke", parents=[common], help="revoke a key by id")
    p.add_argument("id")
    p.set_defaults(handler=keys_revoke)
