"""Config pieces every service shares, and the flags/env that fill them.

Each service has one frozen config object built in its main() from flags, falling back to
HARNESS_* environment variables; nothing is read at import time.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from services.common.identity import AuthConfig


@dataclass(frozen=True)
class TlsFiles:
    """A certificate, its key and the CA that signs peers. Empty = plaintext."""

    cert: str = ""
    key: str = ""
    ca: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert and self.key and self.ca)


@dataclass(frozen=True)
class ServerConfig:
    """Where and how a gRPC server listens."""

    name: str
    host: str = "127.0.0.1"
    port: int = 0  # 0 = pick a free port (tests)
    metrics_port: int | None = 0  # None = no /metrics endpoint
    grace_s: float = 5.0
    tls: TlsFiles = field(default_factory=TlsFiles)
    auth: AuthConfig = field(default_factory=AuthConfig)
    # Extra service names listed by reflection (the router advertises the whole mesh API).
    reflection_extra: tuple[str, ...] = ()
    # Share the port with other processes of the same service (SO_REUSEPORT: router workers);
    # off, a port already in use is an error at start.
    reuse_port: bool = False


def env(name: str, default: str = "") -> str:
    return os.environ.get(f"HARNESS_{name}", default)


def add_server_args(parser: argparse.ArgumentParser, *, default_port: int, default_metrics: int) -> None:
    g = parser.add_argument_group("server")
    g.add_argument("--host", default=env("HOST", "127.0.0.1"))
    g.add_argument("--port", type=int, default=int(env("PORT", str(default_port))))
    g.add_argument("--metrics-port", type=int, default=int(env("METRICS_PORT", str(default_metrics))))
    g.add_argument("--grace", type=float, default=float(env("GRACE_S", "5")), help="SIGTERM grace, s")
    g.add_argument("--tls-cert", default=env("TLS_CERT"))
    g.add_argument("--tls-key", default=env("TLS_KEY"))
    g.add_argument("--tls-ca", default=env("TLS_CA"))
    g.add_argument("--trust-domain", default=env("TRUST_DOMAIN", "harness.local"))
    g.add_argument("--jwt-public-key", default=env("JWT_PUBLIC_KEY"))
    g.add_argument("--jwt-issuer", default=env("JWT_ISSUER", "harness"))
    g.add_argument("--jwt-audience", default=env("JWT_AUDIENCE", "harness"))
    g.add_argument(
        "--jwt-jwks-url",
        default=env("JWT_JWKS_URL"),
        help="verify user tokens with an OIDC issuer's JSON Web Key Set (instead of --jwt-public-key)",
    )
    g.add_argument(
        "--jwt-oidc-discovery-url",
        default=env("JWT_OIDC_DISCOVERY_URL"),
        help="the issuer's <issuer>/.well-known/openid-configuration (its jwks_uri is used)",
    )
    g.add_argument("--log-level", default=env("LOG_LEVEL", "INFO"))
    g.add_argument(
        "--schema",
        choices=("upgrade", "check"),
        default=env("SCHEMA", "upgrade"),
        help="at start, 'upgrade' brings the service's database schema to this release; 'check' only "
        "verifies it is there, when migrations run once in a separate job (env HARNESS_SCHEMA)",
    )


def server_config_from_args(name: str, args: argparse.Namespace, **extra) -> ServerConfig:
    from services.common import migrate

    # Process-wide: the stores of this service open their databases with it.
    migrate.STARTUP.upgrade = getattr(args, "schema", "upgrade") == "upgrade"
    td = args.trust_domain
    return ServerConfig(
        name=name,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port if args.metrics_port >= 0 else None,
        grace_s=args.grace,
        tls=TlsFiles(args.tls_cert, args.tls_key, args.tls_ca),
        auth=AuthConfig(
            trust_domain=td,
            trusted_proxies=(f"spiffe://{td}/envoy",),
            jwt_public_key_path=args.jwt_public_key,
            jwt_issuer=args.jwt_issuer,
            jwt_audience=args.jwt_audience,
            jwt_jwks_url=args.jwt_jwks_url,
            jwt_oidc_discovery_url=args.jwt_oidc_discovery_url,
        ),
        **extra,
    )
