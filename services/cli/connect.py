"""How the CLI reaches the registry: address, mTLS files and user credentials.

Sources, strongest first: command-line flags, HARNESS_* environment variables, then the
`<root>/env` file that `harness up` writes (``export NAME='value'`` lines).

Two ways in:
- direct to the registry with an ops (service) certificate, which the registry treats as admin:
  HARNESS_REGISTRY_ADDR plus HARNESS_OPS_CERT/HARNESS_OPS_KEY, or `<root>/certs/services/cli.pem`
  (made by `harness up`) when no cert is named;
- through the Envoy front door (HARNESS_ADDR) with an agent certificate (HARNESS_CERT/KEY) and a
  user credential: a JWT (`--token`, `--user NAME` = `<root>/tokens/NAME.jwt`, HARNESS_TOKEN) or an
  API key (`--api-key`, HARNESS_API_KEY). Admin operations then need an admin user.
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

DEFAULT_ROOT = ".harness"
DEFAULT_TIMEOUT_S = 10.0


class ConfigError(Exception):
    """The connection settings are incomplete or point at missing files; the message says which."""


def read_env_file(path: Path) -> dict[str, str]:
    """Parses `export NAME='value'` / `NAME=value` lines; a missing file is empty."""
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        name, sep, value = line.partition("=")
        if not sep or not name.strip().isidentifier():
            continue
        try:
            parts = shlex.split(value, posix=True)
        except ValueError:
            parts = [value]
        out[name.strip()] = parts[0] if len(parts) == 1 else " ".join(parts)
    return out


@dataclass(frozen=True)
class Connection:
    """Resolved settings for one CLI run."""

    address: str
    ca: str = ""
    cert: str = ""
    key: str = ""
    token: str = ""
    api_key: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S
    server_name: str = ""

    @property
    def tls(self) -> bool:
        return bool(self.ca)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self.token:
            return (("authorization", f"Bearer {self.token}"),)
        if self.api_key:
            return (("x-api-key", self.api_key),)
        return ()

    def describe(self) -> str:
        how = "mTLS" if self.cert else ("TLS" if self.tls else "plaintext")
        who = "bearer token" if self.token else ("API key" if self.api_key else "certificate only")
        return f"{self.address} ({how}, {who})"

    def channel(self) -> grpc.Channel:
        options: list[tuple[str, object]] = []
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        if not self.tls:
            return grpc.insecure_channel(self.address, options=options)
        try:
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(self.ca).read_bytes(),
                private_key=Path(self.key).read_bytes() if self.key else None,
                certificate_chain=Path(self.cert).read_bytes() if self.cert else None,
            )
        except OSError as exc:
            raise ConfigError(f"cannot read TLS file: {exc}") from exc
        return grpc.secure_channel(self.address, creds, options=options)


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """Connection flags. Defaults are SUPPRESS so they may appear before or after the subcommand."""
    g = parser.add_argument_group("connection")
    s = argparse.SUPPRESS
    g.add_argument("--root", default=s, help="stack directory holding env, certs/ and tokens/ (.harness)")
    g.add_argument("--addr", default=s, help="registry address host:port (direct, or Envoy's front door)")
    g.add_argument("--ca", default=s, help="CA certificate (PEM) that signs the server")
    g.add_argument("--cert", default=s, help="client certificate (PEM) for mTLS")
    g.add_argument("--key", default=s, help="client key (PEM) for mTLS")
    g.add_argument("--plaintext", action="store_true", default=s, help="no TLS (test servers)")
    g.add_argument("--token", default=s, help="user JWT, or @FILE to read it from a file")
    g.add_argument("--user", default=s, help="act as USER with <root>/tokens/USER.jwt")
    g.add_argument("--api-key", default=s, help="user API key (x-api-key)")
    g.add_argument("--timeout", type=float, default=s, help=f"RPC deadline, s ({DEFAULT_TIMEOUT_S:g})")
    g.add_argument("--json", action="store_true", default=s, help="machine output (protobuf JSON)")


def _first(*values: str | None) -> str:
    return next((v for v in values if v), "")


def _read_secret(path: Path, what: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc}") from exc


def stack_root(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Path:
    """The local stack's directory: --root, else HARNESS_ROOT, else `.harness`."""
    environ = os.environ if environ is None else environ
    return Path(getattr(args, "root", None) or environ.get("HARNESS_ROOT") or DEFAULT_ROOT)


def resolve(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Connection:
    """Builds the Connection from flags, the environment and `<root>/env`."""
    environ = os.environ if environ is None else environ
    root = stack_root(args, environ)
    filed = read_env_file(root / "env")

    def var(name: str) -> str:
        return _first(environ.get(name), filed.get(name))

    flag = lambda name: getattr(args, name, None) or ""  # noqa: E731
    plaintext = bool(getattr(args, "plaintext", False)) or var("HARNESS_PLAINTEXT") in ("1", "true")
    # The direct route's address variable: HARNESS_REGISTRY_ADDR, or another service's
    # (HARNESS_AUDIT_ADDR) when its subcommands set `direct_addr_env`/`cli_service` defaults.
    direct_var = getattr(args, "direct_addr_env", "HARNESS_REGISTRY_ADDR")
    service = getattr(args, "cli_service", "registry")
    direct = _first(environ.get(direct_var), filed.get(direct_var))
    ops_cert, ops_key = var("HARNESS_OPS_CERT"), var("HARNESS_OPS_KEY")
    if direct and not ops_cert:
        made = root / "certs" / "services"
        if (made / "cli.pem").is_file() and (made / "cli.key").is_file():
            ops_cert, ops_key = str(made / "cli.pem"), str(made / "cli.key")

    address = flag("addr")
    if direct and (not address or address == direct):
        # Straight to the registry: the ops cert acts as admin; an agent cert would not.
        address, cert, key = direct, _first(flag("cert"), ops_cert), _first(flag("key"), ops_key)
    else:
        address = _first(address, var("HARNESS_ADDR"))
        cert, key = _first(flag("cert"), var("HARNESS_CERT")), _first(flag("key"), var("HARNESS_KEY"))
    if not address:
        raise ConfigError(
            f"no {service} address: pass --addr, set {direct_var} or HARNESS_ADDR, "
            f"or run `harness up` (it writes {root / 'env'})"
        )
    ca = "" if plaintext else _first(flag("ca"), var("HARNESS_CA"))
    if plaintext:
        cert = key = ""
    if bool(cert) != bool(key):
        raise ConfigError("a client certificate needs its key and a key its certificate (--cert/--key)")
    if cert and not ca:
        raise ConfigError("mTLS needs the CA certificate too: pass --ca or set HARNESS_CA")

    token = flag("token")
    if token.startswith("@"):
        token = _read_secret(Path(token[1:]), "token file")
    user = flag("user")
    if not token and user:
        token = _read_secret(root / "tokens" / f"{user}.jwt", f"the token of user {user!r}")
    api_key = flag("api_key")
    if not token and not api_key:
        token = var("HARNESS_TOKEN")
        api_key = "" if token else var("HARNESS_API_KEY")
    timeout = getattr(args, "timeout", None)
    return Connection(
        address=address,
        ca=ca,
        cert=cert,
        key=key,
        token=token.strip(),
        api_key=api_key.strip(),
        timeout_s=float(timeout) if timeout else DEFAULT_TIMEOUT_S,
        server_name=var("HARNESS_SERVER_NAME"),
    )
