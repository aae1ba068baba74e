"""`harness certs|tokens issue`: credentials for a new agent, service or user of the local stack.

They sign with what `harness up` made under `<root>/certs/`: the local CA (agent and service
certificates) and the JWT signing key (user tokens). In production, certificates come from
your own CA and tokens from your identity provider.
"""

from __future__ import annotations

import argparse
import re
import sys

from services.cli.base import UsageError, parse_duration
from services.cli.connect import stack_root
from services.common.identity import mint_jwt
from services.devtools.certs import DEFAULT_TRUST_DOMAIN, NoCertificateAuthority, issue_leaf

_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
MAX_TOKEN_TTL_S = 30 * 24 * 3600


def certs_issue(args: argparse.Namespace) -> int:
    certs = stack_root(args) / "certs"
    try:
        leaf = issue_leaf(certs, args.kind, args.name, args.trust_domain)
    except (NoCertificateAuthority, ValueError) as exc:  # no CA yet; a name a SAN cannot carry
        raise UsageError(str(exc)) from None
    print(f"{args.kind} {args.name}: spiffe://{args.trust_domain}/{args.kind}/{args.name}")
    print(f"certificate {leaf.cert.resolve()}")
    print(f"key         {leaf.key.resolve()}")
    print(f"CA          {(certs / 'ca.pem').resolve()}")
    return 0


def tokens_issue(args: argparse.Namespace) -> int:
    if not _USER.match(args.user):
        raise UsageError(f"user {args.user!r}: use letters, digits and . _ @ - (at most 128)")
    ttl = parse_duration(args.ttl)
    if ttl is None or not 0 < ttl.total_seconds() <= MAX_TOKEN_TTL_S:
        raise UsageError(f"--ttl {args.ttl!r}: use a duration up to 30d (90m, 12h, 7d)")
    root = stack_root(args)
    key = root / "certs" / "jwt-signing.key"
    try:
        private = key.read_bytes()
    except OSError:
        raise UsageError(
            f"no JWT signing key at {key}: start the local stack with `harness up` first"
        ) from None
    token = mint_jwt(private, args.user, roles=tuple(args.roles or ()), ttl_s=int(ttl.total_seconds()))
    tokens = root / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    path = tokens / f"{args.user}.jwt"
    path.touch(mode=0o600)
    path.write_text(token)
    print(token)
    print(f"saved to {path} (use it with --user {args.user})", file=sys.stderr)
    return 0


def _run(handler):
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except UsageError as exc:
            print(f"harness: {exc}", file=sys.stderr)
            return 2

    return run


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    root = argparse.ArgumentParser(add_help=False)
    root.add_argument("--root", default=argparse.SUPPRESS, help="stack directory (.harness, or HARNESS_ROOT)")

    certs = sub.add_parser("certs", help="certificates from the local CA: issue agent|service NAME")
    t = certs.add_subparsers(dest="verb", required=True, metavar="ACTION")
    p = t.add_parser("issue", parents=[root], help="sign a client certificate for a new agent (or a service)")
    p.add_argument("kind", choices=("agent", "service"))
    p.add_argument("name", help="the agent's (or service's) name, as in the registry")
    p.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN, help="SPIFFE trust domain (harness.local)")
    p.set_defaults(func=_run(certs_issue))

    tokens = sub.add_parser("tokens", help="user JWTs signed with the local stack's key: issue USER")
    t = tokens.add_subparsers(dest="verb", required=True, metavar="ACTION")
    p = t.add_parser(
        "issue", parents=[root], help="print a JWT for USER (also saved as <root>/tokens/USER.jwt)"
    )
    p.add_argument("user", help="the user's name in the registry (the token's sub)")
    p.add_argument("--ttl", default="12h", help="lifetime: 90m, 12h, 7d (at most 30d; default 12h)")
    p.add_argument("--role", action="append", dest="roles", help="global role claim, e.g. admin (repeat)")
    p.set_defaults(func=_run(tokens_issue))
