"""`delete` verbs of the registry's command groups (teams, projects, users, agents, versions,
models, tools): one RPC each; the registry refuses (FAILED_PRECONDITION) while something still
uses what is deleted, and says what."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from google.protobuf.message import Message
from harness.registry.v1 import registry_pb2 as pb

from services.cli.base import Ctx

Request = Callable[[argparse.Namespace], Message]


def add_delete(
    actions: argparse._SubParsersAction,
    common: argparse.ArgumentParser,
    noun: str,
    rpc: str,
    request: Request,
    *,
    positionals: tuple[str, ...] = ("name",),
    help_text: str,
) -> argparse.ArgumentParser:
    """Adds `delete POSITIONALS...` calling `rpc` with `request(args)`."""
    p = actions.add_parser("delete", parents=[common], help=help_text)
    for name in positionals:
        p.add_argument(name)

    def handler(ctx: Ctx, args: argparse.Namespace) -> int:
        resp = ctx.call(rpc, request(args))
        what = " ".join(str(getattr(args, n)) for n in positionals)

        def human(r) -> None:
            print(f"deleted {noun} {what}")
            for key in getattr(r, "deleted_api_keys", ()):
                print(f"deleted API key {key}")

        return ctx.emit(resp, human)

    p.set_defaults(handler=handler)
    return p


def tenancy_deletes(groups: dict[str, argparse._SubParsersAction], common: argparse.ArgumentParser) -> None:
    add_delete(groups["teams"], common, "team", "DeleteTeam", lambda a: pb.DeleteTeamRequest(name=a.name),
               help_text="delete a team (it must have no projects or users)")  # fmt: skip
    add_delete(groups["projects"], common, "project", "DeleteProject",
               lambda a: pb.DeleteProjectRequest(name=a.name),
               help_text="delete a project (no agents, API keys or policy rules may name it)")  # fmt: skip
    add_delete(groups["users"], common, "user", "DeleteUser", lambda a: pb.DeleteUserRequest(name=a.name),
               help_text="delete a user and its API keys (remove its role assignments first)")  # fmt: skip


def agent_deletes(groups: dict[str, argparse._SubParsersAction], common: argparse.ArgumentParser) -> None:
    add_delete(groups["agents"], common, "agent", "DeleteAgent", lambda a: pb.DeleteAgentRequest(name=a.name),
               help_text="delete a retired (or never started) agent")  # fmt: skip
    add_delete(groups["versions"], common, "version", "DeleteAgentVersion",
               lambda a: pb.DeleteAgentVersionRequest(agent=a.agent, version=a.version),
               positionals=("agent", "version"), help_text="delete an agent version that has no traffic")  # fmt: skip


def catalog_deletes(groups: dict[str, argparse._SubParsersAction], common: argparse.ArgumentParser) -> None:
    add_delete(groups["models"], common, "model", "DeleteModel", lambda a: pb.DeleteModelRequest(name=a.name),
               help_text="delete a catalog model no agent version pins")  # fmt: skip
    p = add_delete(groups["tools"], common, "tool", "DeleteTool",
                   lambda a: pb.DeleteToolRequest(name=a.name, version=a.version or ""),
                   help_text="delete a catalog tool version no agent version calls")  # fmt: skip
    p.add_argument("--version", help="the tool version (default: the one registered without a version)")
