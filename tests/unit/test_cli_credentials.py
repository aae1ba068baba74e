"""`harness certs issue` and `harness tokens issue` against a local stack's CA and JWT key."""

from __future__ import annotations

import jwt
from cryptography import x509

from services.cli.main import main
from services.devtools.certs import make_certs


def test_certs_issue_signs_an_agent_certificate_with_the_stack_ca(tmp_path, capsys):
    root = tmp_path / ".harness"
    bundle = make_certs(root / "certs", agents=("demo-agent",), services=("cli",))
    assert main(["certs", "issue", "agent", "payments-bot", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "spiffe://harness.local/agent/payments-bot" in out
    pem = root / "certs" / "agents" / "payments-bot.pem"
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    ca = x509.load_pem_x509_certificate(bundle.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://harness.local/agent/payments-bot"
    ]
    assert str(pem.resolve()) in out and (root / "certs" / "agents" / "payments-bot.key").is_file()
    # Issued again: the same valid certificate is kept.
    first = pem.read_bytes()
    assert main(["certs", "issue", "agent", "payments-bot", "--root", str(root)]) == 0
    assert pem.read_bytes() == first
    assert main(["certs", "issue", "service", "billing", "--root", str(root)]) == 0
    svc = x509.load_pem_x509_certificate((root / "certs" / "services" / "billing.pem").read_bytes())
    svc.verify_directly_issued_by(ca)


def test_certs_issue_refuses_bad_names_and_a_missing_ca(tmp_path, capsys):
    assert main(["certs", "issue", "agent", "Bad_Name", "--root", str(tmp_path)]) == 2
    assert "lowercase" in capsys.readouterr().err
    assert main(["certs", "issue", "agent", "bot", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no CA under" in err and "harness up" in err
    assert not (tmp_path / "certs" / "ca.pem").exists()  # never makes a CA nobody trusts


def test_tokens_issue_prints_and_saves_a_jwt_the_stack_accepts(tmp_path, capsys):
    root = tmp_path / ".harness"
    bundle = make_certs(root / "certs", agents=(), services=())
    assert main(["tokens", "issue", "dave", "--ttl", "1h", "--role", "approver", "--root", str(root)]) == 0
    captured = capsys.readouterr()
    token = captured.out.strip()
    claims = jwt.decode(
        token, bundle.jwt_public_key.read_bytes(), algorithms=["RS256"], audience="harness", issuer="harness"
    )
    assert claims["sub"] == "dave" and claims["roles"] == ["approver"]
    assert 3590 <= claims["exp"] - claims["iat"] <= 3600
    saved = root / "tokens" / "dave.jwt"
    assert saved.read_text() == token and saved.stat().st_mode & 0o077 == 0
    assert "--user dave" in captured.err
    for bad in ("0m", "31d", "soon"):
        assert main(["tokens", "issue", "dave", "--ttl", bad, "--root", str(root)]) == 2
    assert main(["tokens", "issue", "dave", "--root", str(tmp_path / "none")]) == 2
    assert "no JWT signing key" in capsys.readouterr().err
