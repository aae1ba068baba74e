"""`harness jwt show|set`: how every service verifies user tokens (the registry's JWT settings)."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.registry.v1 import registry_pb2 as pb

from services.cli.base import Ctx, UsageError


def _print(settings: pb.JwtSettings) -> None:
    source = (
        f"OIDC discovery {settings.oidc_discovery_url}"
        if settings.oidc_discovery_url
        else f"JWKS {settings.jwks_url}"
        if settings.jwks_url
        else "an RSA public key (PEM)"
    )
    print(f"issuer:   {settings.issuer}\naudience: {settings.audience}\nkeys:     {source}")


def jwt_show(ctx: Ctx, args: argparse.Namespace) -> int:
    resp = ctx.call("GetJwtSettings", pb.GetJwtSettingsRequest())
    return ctx.emit(resp, lambda r: _print(r.settings))


def jwt_set(ctx: Ctx, args: argparse.Namespace) -> int:
    sources = [s for s in (args.oidc_discovery_url, args.jwks_url, args.public_key) if s]
    if len(sources) != 1:
        raise UsageError("give exactly one of --oidc-discovery-url, --jwks-url and --public-key")
    pem = ""
    if args.public_key:
        try:
            pem = Path(args.public_key).read_text()
        except OSError as exc:
            raise UsageError(f"--public-key {args.public_key}: {exc.strerror}") from exc
    settings = pb.JwtSettings(
        issuer=args.issuer,
        audience=args.audience,
        public_key_pem=pem,
        jwks_url=args.jwks_url or "",
        oidc_discovery_url=args.oidc_discovery_url or "",
    )
    resp = ctx.call("SetJwtSettings", pb.SetJwtSettingsRequest(settings=settings))
    return ctx.emit(resp, lambda r: _print(r.settings))


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    jwt = sub.add_parser(
        "jwt", help="how user tokens are verified: show, set (an OIDC issuer, a JWKS or a key)"
    )
    t = jwt.add_subparsers(dest="verb", required=True, metavar="ACTION")
    t.add_parser("show", parents=[common], help="the registry's JWT settings").set_defaults(handler=jwt_show)
    p = t.add_parser("set", parents=[common], help="set the JWT settings every service follows (admin)")
    p.add_argument("--issuer", required=True, help="expected iss claim (the OIDC issuer URL)")
    p.add_argument("--audience", required=True, help="expected aud claim")
    p.add_argument("--oidc-discovery-url", help="<issuer>/.well-known/openid-configuration")
    p.add_argument("--jwks-url", help="the issuer's JSON Web Key Set URL")
    p.add_argument("--public-key", metavar="FILE", help="an RSA public key (PEM) for RS256 tokens")
    p.set_defaults(handler=jwt_set)
