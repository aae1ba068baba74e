"""Certificates that must be refused: for tests and ops drills of the front door's mTLS checks."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.devtools.certs import (
    _CLIENT_ONLY,
    DEFAULT_TRUST_DOMAIN,
    LeafPaths,
    _build_ca,
    _ensure_leaf,
    spiffe_uri,
)
from services.devtools.pem_files import write_cert, write_key


def make_foreign_ca_client(
    out_dir: Path, name: str = "intruder", *, trust_domain: str = DEFAULT_TRUST_DOMAIN
) -> LeafPaths:
    """A client cert with a perfectly plausible agent URI SAN, issued by a *different* CA.

    Written under ``out_dir/foreign/`` (its own ``ca.pem`` too). Envoy must refuse it.
    """
    root = Path(out_dir) / "foreign"
    ca_cert, ca_key = _build_ca("Not The Harness CA")
    write_key(root / "ca.key", ca_key)
    write_cert(root / "ca.pem", ca_cert)
    return _ensure_leaf(
        root / f"{name}.pem",
        root / f"{name}.key",
        ca_cert,
        ca_key,
        True,
        cn=name,
        ou="agent",
        uris=[spiffe_uri(trust_domain, "agent", name)],
        usages=_CLIENT_ONLY,
    )


def make_wrong_san_client(
    certs_dir: Path,
    name: str = "x",
    *,
    uri: str | None = None,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    extra_uris: tuple[str, ...] = (),
) -> LeafPaths:
    """A client cert from the Harness CA (in ``certs_dir``) whose URI SAN is not an agent's.

    Default URI ``spiffe://<td>/user/<name>``. Envoy must refuse it at the SAN check. `uri`
    may be any text (a forged-looking agent SAN) and `extra_uris` adds more URI SANs: the
    certificates the CA itself refuses to issue, for tests that they are refused when read.
    """
    certs_dir = Path(certs_dir)
    ca_cert = x509.load_pem_x509_certificate((certs_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((certs_dir / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    root = certs_dir / "drills"
    return _ensure_leaf(
        root / f"{name}.pem",
        root / f"{name}.key",
        ca_cert,
        ca_key,
        True,
        cn=name,
        ou="drill",
        uris=[uri or spiffe_uri(trust_domain, "user", name), *extra_uris],
        usages=_CLIENT_ONLY,
    )
