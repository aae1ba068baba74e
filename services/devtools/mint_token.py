"""`python -m services.devtools.mint_token`: a user token (JWT, RS256) signed with the key pair
whose public half the Harness's JWT settings hold, for a stack without an identity provider
(the compose stack, the Kubernetes dev overlay). Prints the token.

    python -m services.devtools.mint_token --key jwt-signing.key --user alice --role admin
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from services.common.identity import mint_jwt


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m services.devtools.mint_token", description=__doc__.split("\n")[0]
    )
    p.add_argument("--key", type=Path, required=True, help="the RSA private key (PEM) of the JWT settings")
    p.add_argument("--user", required=True, help="the token's subject (a registry user name)")
    p.add_argument("--role", action="append", default=[], help="a role claim (repeatable), e.g. admin")
    p.add_argument("--issuer", default="harness")
    p.add_argument("--audience", default="harness")
    p.add_argument("--ttl", type=int, default=12 * 3600, help="seconds the token lives (default 12 h)")
    args = p.parse_args(argv)
    try:
        private = args.key.read_bytes()
    except OSError as exc:
        p.error(f"--key: {exc}")
    token = mint_jwt(
        private, args.user, roles=tuple(args.role), issuer=args.issuer, audience=args.audience, ttl_s=args.ttl
    )
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
