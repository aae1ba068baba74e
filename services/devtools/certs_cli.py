"""Local CA and certificates for the stack (`make certs`): the Harness CA, Envoy's server cert,
one client cert per agent and per service, the JWT signing key pair, and optional drill certs
that the front door must refuse."""

from __future__ import annotations

import argparse
import secrets
from collections.abc import Sequence
from pathlib import Path

from services.devtools.certs import (
    DEFAULT_AGENTS,
    DEFAULT_HOSTS,
    DEFAULT_SERVICES,
    DEFAULT_TRUST_DOMAIN,
    check_identity_names,
    make_certs,
)
from services.devtools.drill_certs import make_foreign_ca_client, make_wrong_san_client


def ensure_redaction_key(path: Path) -> Path:
    """32 random bytes (hex), mode 0600, made once: replacing it would change every pseudonym."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m services.devtools.certs_cli", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", type=Path, default=Path(".harness/certs"))
    p.add_argument("--agent", action="append", dest="agents", help=f"repeatable; default {DEFAULT_AGENTS}")
    p.add_argument("--service", action="append", dest="services", help=f"default {DEFAULT_SERVICES}")
    p.add_argument("--host", action="append", dest="hosts", help=f"Envoy SANs; default {DEFAULT_HOSTS}")
    p.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    p.add_argument("--force", action="store_true", help="remake everything, including the CA")
    p.add_argument("--foreign-client", metavar="NAME", help="also make a drill cert from another CA")
    p.add_argument("--wrong-san-client", metavar="NAME", help="also make a drill cert with a non-agent SAN")
    p.add_argument(
        "--redaction-key", type=Path, metavar="FILE",
        help="also write the HMAC key every router replica shares for hash-mode PII redaction "
        "(--redaction-key-file), once: an existing key is kept",
    )  # fmt: skip
    args = p.parse_args(argv)

    td = args.trust_domain
    try:
        check_identity_names(td, args.agents or DEFAULT_AGENTS, args.services or DEFAULT_SERVICES)
    except ValueError as exc:
        p.error(str(exc))
    bundle = make_certs(
        args.out,
        agents=args.agents or DEFAULT_AGENTS,
        services=args.services or DEFAULT_SERVICES,
        trust_domain=td,
        hosts=args.hosts or DEFAULT_HOSTS,
        force=args.force,
    )
    print(f"CA: {bundle.ca_cert}\nenvoy: {bundle.envoy.cert}")
    for name, leaf in {**bundle.services, **bundle.agents}.items():
        print(f"{name}: {leaf.cert}")
    print(f"jwt: {bundle.jwt_private_key} / {bundle.jwt_public_key}")
    if args.redaction_key:
        print(f"redaction key: {ensure_redaction_key(args.redaction_key)}")
    if args.foreign_client:
        drill = make_foreign_ca_client(args.out, args.foreign_client, trust_domain=td)
        print(f"foreign-CA drill: {drill.cert}")
    if args.wrong_san_client:
        drill = make_wrong_san_client(args.out, args.wrong_san_client, trust_domain=td)
        print(f"wrong-SAN drill: {drill.cert}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
