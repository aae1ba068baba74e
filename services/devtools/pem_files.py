"""Writing PEM files safely (keys 0600 from the first byte, atomic renames) and the JWT signing
key pair of the local stack."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temp file created with ``mode`` from the start, then rename.

    Keys never exist on disk with wider permissions, even briefly, and readers never see a
    half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp creates 0600
    try:
        if mode != 0o600:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_key(path: Path, key: PrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(path, pem, 0o600)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def ensure_jwt_keys(out_dir: Path, force: bool) -> tuple[Path, Path]:
    priv, pub = out_dir / "jwt-signing.key", out_dir / "jwt-signing.pub"
    if not force and priv.exists() and pub.exists():
        try:
            key = serialization.load_pem_private_key(priv.read_bytes(), password=None)
            pub_key = serialization.load_pem_public_key(pub.read_bytes())
            if isinstance(key, rsa.RSAPrivateKey) and key.public_key().public_numbers() == (
                pub_key.public_numbers()  # type: ignore[union-attr]
            ):
                return priv, pub
        except ValueError:
            pass
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_key(priv, key)
    pub_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_atomic(pub, pub_pem, 0o644)
    return priv, pub
