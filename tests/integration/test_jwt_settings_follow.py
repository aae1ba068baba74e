"""Every service that verifies user tokens follows the registry's JWT settings, an OIDC issuer's
JWKS included: the registry (its own stored settings) and the audit service (a watch of the
registry), over real mTLS servers, with the keys from a local JWKS server."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from harness.audit.v1 import audit_pb2, audit_pb2_grpc
from harness.registry.v1 import registry_pb2 as pb
from harness.registry.v1.registry_pb2_grpc import RegistryStub
from prometheus_client import CollectorRegistry

from services.audit.config import AuditConfig
from services.audit.servicer import start_audit
from services.common.config import ServerConfig, TlsFiles
from services.common.identity import AuthConfig
from services.common.jwt_settings import follow_registry_jwt_settings
from services.devtools.certs import make_certs
from services.registry.app import RegistryConfig, serve
from tests.helpers.jwks_server import IdpKey, JwksServer


@pytest.fixture
def idp():
    server = JwksServer()
    yield server
    server.close()


async def code_of(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def eventually(predicate, within_s: float = 10.0) -> None:
    started = time.monotonic()
    while not await predicate():
        assert time.monotonic() - started < within_s, f"not true within {within_s} s"
        await asyncio.sleep(0.05)


async def test_registry_and_audit_verify_tokens_from_the_issuers_jwks(tmp_path, jwt_keypair, mint_token, idp):
    certs = make_certs(tmp_path / "certs", services=("registry", "audit"), agents=("demo-agent",))

    def tls(name: str) -> TlsFiles:
        pair = certs.services[name]
        return TlsFiles(str(pair.cert), str(pair.key), str(certs.ca_cert))

    auth = AuthConfig(jwt_public_key_path=str(jwt_keypair[0]))  # the flags: the dev key file
    registry = await serve(
        RegistryConfig(
            server=ServerConfig(name="registry", metrics_port=None, auth=auth, tls=tls("registry")),
            db_url=f"sqlite:///{tmp_path / 'registry.db'}",
        )
    )
    audit = await start_audit(
        AuditConfig(
            server=ServerConfig(name="audit", metrics_port=None, auth=auth, tls=tls("audit")),
            db_url=f"sqlite:///{tmp_path / 'audit' / 'audit.db'}",
        ),
        metrics_registry=CollectorRegistry(),
    )
    follow_registry_jwt_settings(audit, f"127.0.0.1:{registry.port}", tls("audit"))
    agent = certs.agent("demo-agent")
    creds = grpc.ssl_channel_credentials(
        certs.ca_cert.read_bytes(), agent.key.read_bytes(), agent.cert.read_bytes()
    )
    reg_ch = grpc.aio.secure_channel(f"localhost:{registry.port}", creds)
    aud_ch = grpc.aio.secure_channel(f"localhost:{audit.port}", creds)
    try:
        reg, aud = RegistryStub(reg_ch), audit_pb2_grpc.AuditStub(aud_ch)
        key = IdpKey.rsa("idp-1")
        idp.publish(key)
        idp_token = (("authorization", "Bearer " + key.mint("auditor", issuer=idp.issuer, roles=["admin"])),)
        dev_admin = (("authorization", "Bearer " + mint_token("root", "admin")),)

        async def registry_code(md) -> grpc.StatusCode:
            return await code_of(reg.GetJwtSettings(pb.GetJwtSettingsRequest(), metadata=md, timeout=5))

        async def audit_code(md) -> grpc.StatusCode:
            return await code_of(aud.Query(audit_pb2.QueryRequest(), metadata=md, timeout=5))

        # Before: the key file verifies, the issuer's tokens are refused everywhere.
        assert await registry_code(idp_token) == grpc.StatusCode.UNAUTHENTICATED
        assert await audit_code(idp_token) == grpc.StatusCode.UNAUTHENTICATED
        assert await audit_code(dev_admin) == grpc.StatusCode.OK

        settings = pb.JwtSettings(issuer=idp.issuer, audience="harness", jwks_url=idp.jwks_url)
        await reg.SetJwtSettings(pb.SetJwtSettingsRequest(settings=settings), metadata=dev_admin, timeout=5)

        async def registry_follows() -> bool:
            return await registry_code(idp_token) != grpc.StatusCode.UNAUTHENTICATED

        async def audit_follows() -> bool:
            return await audit_code(idp_token) == grpc.StatusCode.OK

        await eventually(registry_follows)
        await eventually(audit_follows)
        # The issuer's settings replace the key file: the dev token no longer verifies.
        assert await registry_code(dev_admin) == grpc.StatusCode.UNAUTHENTICATED
        assert await audit_code(dev_admin) == grpc.StatusCode.UNAUTHENTICATED
        assert idp.hits["/jwks"] >= 2  # each service fetched the set itself
    finally:
        await reg_ch.close()
        await aud_ch.close()
        await audit.stop(0)
        await registry.stop(0)
