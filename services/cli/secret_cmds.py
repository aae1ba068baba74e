"""`harness secrets set|list|delete`: values the routers send to tools' endpoints (an upstream
API token), stored in the registry by name. A tool names its credential
(`harness tools import-mcp ... --credential NAME`); nothing reads a value back but the routers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.registry.v1 import registry_pb2 as pb

from services.cli import output
from services.cli.base import Ctx, UsageError

MAX_SECRET_BYTES = 8192


def read_secret(path: str) -> str:
    """A secret's value from a file (`-`: standard input), without its trailing newline: never
    from the command line, where shell history and `ps` would keep it."""
    try:
        raw = (
            sys.stdin.read(MAX_SECRET_BYTES + 1)
            if path == "-"
            else Path(path).read_text()[: MAX_SECRET_BYTES + 1]
        )
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the secret from {path!r}: {exc}") from None
    value = raw.rstrip("\r\n")
    if not value:
        raise UsageError(f"{path!r} holds no secret")
    return value


def secrets_set(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = ctx.call("SetSecret", pb.SetSecretRequest(name=args.name, value=read_secret(args.from_file)))
    return ctx.emit(resp, lambda r: print(f"secret {r.secret.name} set (its value is never shown)"))


def secrets_list(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = ctx.call("ListSecrets", pb.ListSecretsRequest())

    def human(r) -> None:
        rows = [[s.name, output.when(s.update_time), s.updated_by] for s in r.secrets]
        output.table(("NAME", "SET", "BY"), rows)

    return ctx.emit(resp, human)


def secrets_delete(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = ctx.call("DeleteSecret", pb.DeleteSecretRequest(name=args.name))
    return ctx.emit(resp, lambda r: print(f"secret {args.name} deleted"))


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    secrets = sub.add_parser("secrets", help="tools' upstream credentials: set, list, delete")
    t = secrets.add_subparsers(dest="verb", required=True, metavar="ACTION")
    p = t.add_parser("set", parents=[common], help="store a secret (replaces its value if it exists)")
    p.add_argument("name", help="a DNS label, e.g. books-token")
    p.add_argument(
        "--from-file", default="-", metavar="PATH", help="read the value from PATH (default: standard input)"
    )
    p.set_defaults(handler=secrets_set)
    t.add_parser("list", parents=[common], help="names and when they were set").set_defaults(
        handler=secrets_list
    )
    p = t.add_parser("delete", parents=[common], help="delete a secret no tool names")
    p.add_argument("name")
    p.set_defaults(handler=secrets_delete)
