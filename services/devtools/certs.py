"""Development PKI for the Harness mesh: a CA, Envoy's cert, service and agent certs, JWT keys.

Identities are SPIFFE-style URI SANs: ``spiffe://<td>/envoy``, ``spiffe://<td>/service/<name>``,
``spiffe://<td>/agent/<name>``. Envoy admits a client only if its cert chains to the CA *and*
carries an agent URI, so the helpers at the bottom make the two kinds of bad client certs
that ops drills and tests need (foreign CA, right CA but wrong SAN).

CLI: ``python -m services.devtools.certs_cli --out .harness/certs --agent demo-agent --service router``
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.xfcc import is_valid_name
from services.devtools.pem_files import PrivateKey, ensure_jwt_keys, write_cert, write_key

DEFAULT_TRUST_DOMAIN = "harness.local"
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
DEFAULT_SERVICES = ("router", "registry", "pool", "audit", "cost", "enginesim")
DEFAULT_AGENTS = ("demo-agent", "risk-agent")
CA_DAYS = 3650
LEAF_DAYS = 365
# Remake a cert this close to expiry rather than hand out one that dies mid-run.
_RENEW_MARGIN = dt.timedelta(days=7)
# Backdate so a peer with a slightly slow clock still accepts a fresh cert.
_BACKDATE = dt.timedelta(minutes=5)

_SERVER_CLIENT = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
_CLIENT_ONLY = (ExtendedKeyUsageOID.CLIENT_AUTH,)


@dataclass(frozen=True)
class LeafPaths:
    cert: Path
    key: Path


@dataclass(frozen=True)
class CertBundle:
    root: Path
    trust_domain: str
    ca_cert: Path
    ca_key: Path
    envoy: LeafPaths
    services: dict[str, LeafPaths] = field(default_factory=dict)
    agents: dict[str, LeafPaths] = field(default_factory=dict)
    jwt_private_key: Path | None = None
    jwt_public_key: Path | None = None

    def service(self, name: str) -> LeafPaths:
        return self.services[name]

    def agent(self, name: str) -> LeafPaths:
        return self.agents[name]


def spiffe_uri(trust_domain: str, kind: str, name: str | None = None) -> str:
    """``spiffe://<td>/<kind>[/<name>]``; kind is envoy, service, agent (or anything for drills)."""
    return f"spiffe://{trust_domain}/{kind}" + (f"/{name}" if name else "")


_TRUST_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")


def check_identity_names(trust_domain: str, agents: Sequence[str], services: Sequence[str]) -> None:
    """Refuses names that could not be read back unambiguously from a SPIFFE URI in XFCC.

    Envoy writes URI SANs unquoted, so a ',' or ';' in a name would read as another hop or
    another agent: only DNS-label names are issued (the rule services apply when reading).
    """
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise ValueError(
            f"trust domain {trust_domain!r} is invalid: use lowercase letters, digits, '.' and '-'"
        )
    for kind, names in (("agent", agents), ("service", services)):
        for name in names:
            if not is_valid_name(name):
                raise ValueError(
                    f"{kind} name {name!r} is invalid for a certificate: use lowercase letters, "
                    "digits and dashes, 1-63 characters, starting and ending with a letter or digit"
                )


# ---------------------------------------------------------------- building certs


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(cn: str, ou: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Harness"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    # ECDSA leaves only sign (TLS 1.2/1.3 ECDHE); the CA also signs certs and CRLs.
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _build_ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_ec_key()
    subject = _name(cn, "ca")
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _build_leaf(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    *,
    cn: str,
    ou: str,
    uris: Sequence[str],
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    usages: Sequence[x509.ObjectIdentifier],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_ec_key()
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, ou))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        # Non-critical: the subject is not empty (RFC 5280 4.2.1.6); the URI SAN is the identity.
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


# ---------------------------------------------------------------- validity checks


def _load_pair(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, PrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        return None
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        return None
    now = _now()
    if not (cert.not_valid_before_utc <= now and now + _RENEW_MARGIN < cert.not_valid_after_utc):
        return None
    return cert, key


def _signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _sans(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v.value) for v in ext}


def _ensure_leaf(
    cert_path: Path, key_path: Path, ca_cert: x509.Certificate, ca_key: PrivateKey, force: bool, **spec
) -> LeafPaths:
    """Keep a leaf that is valid, issued by this CA and has the wanted SANs; else remake it."""
    if not force:
        loaded = _load_pair(cert_path, key_path)
        want = set(spec["uris"]) | set(spec.get("dns", ())) | set(spec.get("ips", ()))
        if loaded and _signed_by(loaded[0], ca_cert) and _sans(loaded[0]) == want:
            return LeafPaths(cert_path, key_path)
    cert, key = _build_leaf(ca_cert, ca_key, **spec)
    write_key(key_path, key)
    write_cert(cert_path, cert)
    return LeafPaths(cert_path, key_path)


def _ensure_ca(out_dir: Path, force: bool) -> tuple[x509.Certificate, PrivateKey, bool]:
    """Return (cert, key, remade)."""
    ca_pem, ca_key_path = out_dir / "ca.pem", out_dir / "ca.key"
    if not force:
        loaded = _load_pair(ca_pem, ca_key_path)
        if loaded:
            cert, key = loaded
            try:
                is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            except x509.ExtensionNotFound:
                is_ca = False
            if is_ca and _signed_by(cert, cert):
                return cert, key, False
    cert, key = _build_ca("Harness Dev CA")
    write_key(ca_key_path, key)
    write_cert(ca_pem, cert)
    return cert, key, True


def _split_hosts(hosts: Sequence[str]) -> tuple[list[str], list[str]]:
    dns, ips = [], []
    for h in hosts:
        try:
            ipaddress.ip_address(h)
            ips.append(h)
        except ValueError:
            dns.append(h)
    return dns, ips


# ---------------------------------------------------------------- public API


def make_certs(
    out_dir: Path,
    *,
    agents: Sequence[str] = DEFAULT_AGENTS,
    services: Sequence[str] = DEFAULT_SERVICES,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    force: bool = False,
) -> CertBundle:
    """Create (or reuse) the dev PKI under ``out_dir``; see the module docstring for identities.

    A valid CA is reused; if the CA is (re)made every leaf is remade too, since the old ones no
    longer chain. ``force=True`` remakes everything, JWT keys included.
    """
    check_identity_names(trust_domain, agents, services)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key, remade = _ensure_ca(out_dir, force)
    force_leaves = force or remade

    dns, ips = _split_hosts(hosts)
    if "127.0.0.1" not in ips:
        ips.append("127.0.0.1")
    envoy = _ensure_leaf(
        out_dir / "envoy.pem",
        out_dir / "envoy.key",
        ca_cert,
        ca_key,
        force_leaves,
        cn="envoy",
        ou="envoy",
        uris=[spiffe_uri(trust_domain, "envoy")],
        dns=[*dict.fromkeys([*dns, "envoy"])],
        ips=ips,
        usages=_SERVER_CLIENT,
    )
    svc_paths = {
        name: _leaf(out_dir, ca_cert, ca_key, force_leaves, "service", name, trust_domain)
        for name in services
    }
    agent_paths = {
        name: _leaf(out_dir, ca_cert, ca_key, force_leaves, "agent", name, trust_domain) for name in agents
    }
    jwt_priv, jwt_pub = ensure_jwt_keys(out_dir, force)
    return CertBundle(
        root=out_dir,
        trust_domain=trust_domain,
        ca_cert=out_dir / "ca.pem",
        ca_key=out_dir / "ca.key",
        envoy=envoy,
        services=svc_paths,
        agents=agent_paths,
        jwt_private_key=jwt_priv,
        jwt_public_key=jwt_pub,
    )


def _leaf(out_dir: Path, ca_cert, ca_key, force: bool, kind: str, name: str, trust_domain: str) -> LeafPaths:
    """An agent's client certificate or a service's server+client one, under <out_dir>/<kind>s/."""
    # Services also serve (localhost); agents are clients only.
    server = {"dns": [*dict.fromkeys(["localhost", name])], "ips": ["127.0.0.1"]} if kind == "service" else {}
    return _ensure_leaf(
        out_dir / f"{kind}s" / f"{name}.pem",
        out_dir / f"{kind}s" / f"{name}.key",
        ca_cert,
        ca_key,
        force,
        cn=name,
        ou=kind,
        uris=[spiffe_uri(trust_domain, kind, name)],
        usages=_SERVER_CLIENT if server else _CLIENT_ONLY,
        **server,
    )


class NoCertificateAuthority(Exception):
    """There is no CA to sign with; the message says how to make one."""


def issue_leaf(out_dir: Path, kind: str, name: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> LeafPaths:
    """Signs (or reuses, while valid) the certificate of one more agent or service with the
    existing CA under `out_dir`; never makes a CA, since nothing would trust a new one.
    A bad name or trust domain is a ValueError."""
    if kind not in ("agent", "service"):
        raise ValueError(f"kind must be agent or service, got {kind!r}")
    check_identity_names(trust_domain, [name] if kind == "agent" else [], [name] if kind == "service" else [])
    loaded = _load_pair(out_dir / "ca.pem", out_dir / "ca.key")
    if loaded is None:
        raise NoCertificateAuthority(
            f"no CA under {out_dir} (ca.pem and ca.key): start the local stack with `harness up` "
            "(or `make certs`) first"
        )
    return _leaf(out_dir, *loaded, False, kind, name, trust_domain)
