"""The dev PKI: chains, SANs, key permissions, idempotency."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from services.devtools import certs as certs_mod
from services.devtools import certs_cli
from services.devtools.certs import CertBundle, make_certs
from services.devtools.drill_certs import make_foreign_ca_client, make_wrong_san_client

AGENTS = ("demo-agent", "risk-agent")
SERVICES = ("router", "registry")


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def ekus(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def bundle(tmp_path: Path) -> CertBundle:
    return make_certs(tmp_path / "certs", agents=AGENTS, services=SERVICES)


def all_leaf_certs(b: CertBundle) -> list[Path]:
    return [b.envoy.cert, *(p.cert for p in b.services.values()), *(p.cert for p in b.agents.values())]


def test_every_leaf_chains_to_the_ca(bundle: CertBundle) -> None:
    ca = load(bundle.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca.verify_directly_issued_by(ca)
    for path in all_leaf_certs(bundle):
        leaf = load(path)
        leaf.verify_directly_issued_by(ca)  # raises on a bad signature or issuer mismatch
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_chain_verifies_with_a_tls_policy_verifier(bundle: CertBundle) -> None:
    # Full RFC 5280 path validation (EKU, validity, SAN) as a TLS client would do it.
    store = x509.verification.Store([load(bundle.ca_cert)])
    verifier = x509.verification.PolicyBuilder().store(store).build_server_verifier(x509.DNSName("router"))
    chain = verifier.verify(load(bundle.service("router").cert), [])
    assert chain[-1] == load(bundle.ca_cert)


def test_envoy_cert_sans_and_usages(bundle: CertBundle) -> None:
    cert = load(bundle.envoy.cert)
    names = sans(cert)
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://harness.local/envoy"]
    assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", "envoy"}
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert ekus(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


@pytest.mark.parametrize("name", SERVICES)
def test_service_cert_sans(bundle: CertBundle, name: str) -> None:
    cert = load(bundle.service(name).cert)
    names = sans(cert)
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://harness.local/service/{name}"
    ]
    assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", name}
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert ekus(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


@pytest.mark.parametrize("name", AGENTS)
def test_agent_cert_is_client_only_with_agent_uri(bundle: CertBundle, name: str) -> None:
    cert = load(bundle.agent(name).cert)
    assert sans(cert).get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://harness.local/agent/{name}"
    ]
    assert ekus(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_trust_domain_and_hosts_are_configurable(tmp_path: Path) -> None:
    b = make_certs(
        tmp_path,
        agents=["a"],
        services=["s"],
        trust_domain="corp.example",
        hosts=["envoy.corp.example", "10.0.0.5"],
    )
    envoy = sans(load(b.envoy.cert))
    assert envoy.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://corp.example/envoy"]
    assert set(envoy.get_values_for_type(x509.DNSName)) == {"envoy.corp.example", "envoy"}
    assert set(envoy.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("127.0.0.1"),
    }
    assert sans(load(b.agent("a").cert)).get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://corp.example/agent/a"
    ]


def test_validity_periods(bundle: CertBundle) -> None:
    ca = load(bundle.ca_cert)
    leaf = load(bundle.agent("demo-agent").cert)
    ca_days = (ca.not_valid_after_utc - ca.not_valid_before_utc).days
    leaf_days = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days
    assert 3649 <= ca_days <= 3651
    assert 364 <= leaf_days <= 366


def test_key_files_are_0600_and_match_their_certs(bundle: CertBundle) -> None:
    keys = sorted(bundle.root.rglob("*.key"))
    # ca, envoy, jwt, 2 services, 2 agents
    assert len(keys) == 7
    for key in keys:
        assert mode(key) == 0o600, key
    for leaf in [bundle.envoy, *bundle.services.values(), *bundle.agents.values()]:
        key = serialization.load_pem_private_key(leaf.key.read_bytes(), password=None)
        assert key.public_key().public_numbers() == load(leaf.cert).public_key().public_numbers()
    for pem in bundle.root.rglob("*.pem"):
        assert mode(pem) == 0o644, pem


def test_key_files_are_never_created_wider_than_0600(tmp_path: Path) -> None:
    # Even with a permissive umask the key is written through a 0600 file (not chmod-ed later).
    old = os.umask(0)
    try:
        b = make_certs(tmp_path, agents=["a"], services=[])
    finally:
        os.umask(old)
    assert mode(b.ca_key) == 0o600
    assert mode(b.agent("a").key) == 0o600


def test_jwt_keypair_signs_and_verifies_rs256(bundle: CertBundle) -> None:
    assert bundle.jwt_private_key is not None and bundle.jwt_public_key is not None
    priv = serialization.load_pem_private_key(bundle.jwt_private_key.read_bytes(), password=None)
    pub = serialization.load_pem_public_key(bundle.jwt_public_key.read_bytes())
    assert isinstance(priv, rsa.RSAPrivateKey) and isinstance(pub, rsa.RSAPublicKey)
    assert priv.key_size == 2048
    sig = priv.sign(b"header.payload", padding.PKCS1v15(), hashes.SHA256())
    pub.verify(sig, b"header.payload", padding.PKCS1v15(), hashes.SHA256())


def test_second_call_reuses_ca_and_leaves(tmp_path: Path) -> None:
    first = make_certs(tmp_path, agents=AGENTS, services=SERVICES)
    before = {p: p.read_bytes() for p in first.root.rglob("*") if p.is_file()}
    second = make_certs(tmp_path, agents=AGENTS, services=SERVICES)
    after = {p: p.read_bytes() for p in second.root.rglob("*") if p.is_file()}
    assert before == after
    assert second == first


def test_missing_leaf_is_recreated_under_the_same_ca(tmp_path: Path) -> None:
    first = make_certs(tmp_path, agents=AGENTS, services=SERVICES)
    ca_bytes = first.ca_cert.read_bytes()
    router_bytes = first.service("router").cert.read_bytes()
    first.agent("demo-agent").cert.unlink()
    second = make_certs(tmp_path, agents=[*AGENTS, "new-agent"], services=SERVICES)
    assert second.ca_cert.read_bytes() == ca_bytes
    assert second.service("router").cert.read_bytes() == router_bytes  # untouched
    ca = load(second.ca_cert)
    load(second.agent("demo-agent").cert).verify_directly_issued_by(ca)
    load(second.agent("new-agent").cert).verify_directly_issued_by(ca)


def test_leaf_signed_by_another_ca_is_replaced(tmp_path: Path) -> None:
    b = make_certs(tmp_path, agents=["a"], services=[])
    foreign = make_foreign_ca_client(tmp_path / "elsewhere", "a")
    b.agent("a").cert.write_bytes(foreign.cert.read_bytes())
    b.agent("a").key.write_bytes(foreign.key.read_bytes())
    again = make_certs(tmp_path, agents=["a"], services=[])
    load(again.agent("a").cert).verify_directly_issued_by(load(again.ca_cert))


def test_force_remakes_everything(tmp_path: Path) -> None:
    first = make_certs(tmp_path, agents=AGENTS, services=SERVICES)
    old_ca = load(first.ca_cert)
    old_files = {p: p.read_bytes() for p in first.root.rglob("*") if p.is_file()}
    forced = make_certs(tmp_path, agents=AGENTS, services=SERVICES, force=True)
    new_ca = load(forced.ca_cert)
    assert new_ca.fingerprint(hashes.SHA256()) != old_ca.fingerprint(hashes.SHA256())
    for path, old in old_files.items():
        assert path.read_bytes() != old, f"{path} was not remade"
    for path in all_leaf_certs(forced):
        load(path).verify_directly_issued_by(new_ca)


def test_broken_ca_is_replaced_and_leaves_follow(tmp_path: Path) -> None:
    first = make_certs(tmp_path, agents=["a"], services=["s"])
    old_leaf = first.agent("a").cert.read_bytes()
    first.ca_key.write_bytes(b"garbage")
    second = make_certs(tmp_path, agents=["a"], services=["s"])
    assert second.agent("a").cert.read_bytes() != old_leaf
    load(second.agent("a").cert).verify_directly_issued_by(load(second.ca_cert))


def test_foreign_ca_client_does_not_chain_to_harness_ca(bundle: CertBundle) -> None:
    foreign = make_foreign_ca_client(bundle.root, "intruder")
    cert = load(foreign.cert)
    # It looks like an agent...
    assert sans(cert).get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://harness.local/agent/intruder"
    ]
    # ...but is not signed by the Harness CA.
    with pytest.raises((ValueError, InvalidSignature)):
        cert.verify_directly_issued_by(load(bundle.ca_cert))
    assert mode(foreign.key) == 0o600


def test_wrong_san_client_chains_but_is_not_an_agent(bundle: CertBundle) -> None:
    drill = make_wrong_san_client(bundle.root, "x")
    cert = load(drill.cert)
    cert.verify_directly_issued_by(load(bundle.ca_cert))
    assert sans(cert).get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://harness.local/user/x"]
    custom = make_wrong_san_client(bundle.root, "svc", uri="spiffe://harness.local/service/router")
    assert sans(load(custom.cert)).get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://harness.local/service/router"
    ]


def test_cli_writes_the_default_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert certs_cli.main(["--out", str(out), "--agent", "a1", "--service", "router"]) == 0
    assert (out / "agents" / "a1.pem").exists()
    assert (out / "services" / "router.pem").exists()
    assert not (out / "services" / "registry.pem").exists()  # only what was asked for
    assert {"ca.pem", "ca.key", "envoy.pem", "envoy.key", "jwt-signing.key", "jwt-signing.pub"} <= {
        p.name for p in out.iterdir()
    }
    assert "a1" in capsys.readouterr().out


def test_cli_defaults(tmp_path: Path) -> None:
    out = tmp_path / "defaults"
    certs_cli.main(["--out", str(out)])
    assert {p.stem for p in (out / "services").glob("*.pem")} == set(certs_mod.DEFAULT_SERVICES)
    assert {p.stem for p in (out / "agents").glob("*.pem")} == {"demo-agent", "risk-agent"}


@pytest.mark.parametrize(
    "agent",
    [
        "demo-agent,URI=spiffe://harness.local/agent/ledger-rpa",  # reads as a second XFCC hop
        "demo-agent;URI=spiffe://harness.local/agent/ledger-rpa",  # reads as a second URI
        "Demo",
        "a_b",
        "a/b",
        "-a",
        "a" * 64,
        "",
    ],
)
def test_names_that_xfcc_could_misread_are_never_issued(tmp_path: Path, agent: str) -> None:
    with pytest.raises(ValueError, match="invalid for a certificate"):
        make_certs(tmp_path, agents=[agent], services=["router"])
    assert not (tmp_path / "ca.pem").exists()  # refused before anything was written
    with pytest.raises(SystemExit):  # the CLI says why (argparse error, exit 2)
        certs_cli.main(["--out", str(tmp_path / "cli"), "--agent", agent])


def test_bad_trust_domain_is_never_issued(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="trust domain"):
        make_certs(tmp_path, agents=["a"], services=["s"], trust_domain="x;URI=y")
