"""Every service that verifies user tokens follows the registry's JWT settings, an OIDC issuer's
JWKS included: the registry (its own stored settings), the pool (its registry copy), audit and
cost (a watch of the registry), over real mTLS servers, with the keys from a local JWKS server.
Routers follow through the same helper as the pool (services/common/jwt_settings.py)."""

from __future__ import annotations

import grpc
import pytest
from harness.audit.v1 import audit_pb2, audit_pb2_grpc
from harness.cost.v1 import cost_pb2, cost_pb2_grpc
from harness.pool.v1 import pool_pb2, pool_pb2_grpc
from harness.registry.v1 import registry_pb2 as pb
from harness.registry.v1.registry_pb2_grpc import RegistryStub
from prometheus_client import CollectorRegistry

from services.audit.config import AuditConfig
from services.audit.servicer import start_audit
from services.common.config import ServerConfig, TlsFiles
from services.common.identity import AuthConfig
from services.common.jwt_settings import follow_registry_jwt_settings
from services.cost.config import CostConfig
from services.cost.servicer import start_cost
from services.devtools.certs import make_certs
from services.pool.app import serve as serve_pool
from services.pool.config import PoolConfig
from services.registry.app import RegistryConfig, serve
from tests.helpers.jwks_server import IdpKey, JwksServer
from tests.helpers.polling import eventually


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


async def test_every_service_verifies_tokens_from_the_issuers_jwks(tmp_path, jwt_keypair, mint_token, idp):
    names = ("registry", "audit", "cost", "pool")
    certs = make_certs(tmp_path / "certs", services=names, agents=("demo-agent",))

    def tls(name: str) -> TlsFiles:
        pair = certs.services[name]
        return TlsFiles(str(pair.cert), str(pair.key), str(certs.ca_cert))

    def server(name: str) -> ServerConfig:
        return ServerConfig(name=name, metrics_port=None, auth=auth, tls=tls(name))

    auth = AuthConfig(jwt_public_key_path=str(jwt_keypair[0]))  # the flags: the dev key file
    registry = await serve(RegistryConfig(server=server("registry"), db_url=f"sqlite:///{tmp_path / 'r.db'}"))
    reg_addr = f"127.0.0.1:{registry.port}"
    audit = await start_audit(
        AuditConfig(server=server("audit"), db_url=f"sqlite:///{tmp_path / 'audit' / 'audit.db'}"),
        metrics_registry=CollectorRegistry(),
    )
    follow_registry_jwt_settings(audit, reg_addr, tls("audit"))
    cost = await start_cost(
        CostConfig(server=server("cost"), db_url=f"sqlite:///{tmp_path / 'cost.db'}"),
        metrics_registry=CollectorRegistry(),
    )
    follow_registry_jwt_settings(cost, reg_addr, tls("cost"))
    pool, _ = await serve_pool(PoolConfig(nvml=False, registry_addr=reg_addr), server("pool"))
    agent = certs.agent("demo-agent")
    creds = grpc.ssl_channel_credentials(
        certs.ca_cert.read_bytes(), agent.key.read_bytes(), agent.cert.read_bytes()
    )
    running = {"registry": registry, "audit": audit, "cost": cost, "pool": pool}
    channels = {n: grpc.aio.secure_channel(f"localhost:{r.port}", creds) for n, r in running.items()}
    probes = {  # one read per service that any admin may make
        "registry": lambda md: RegistryStub(channels["registry"]).GetJwtSettings(
            pb.GetJwtSettingsRequest(), metadata=md, timeout=5
        ),
        "audit": lambda md: audit_pb2_grpc.AuditStub(channels["audit"]).Query(
            audit_pb2.QueryRequest(), metadata=md, timeout=5
        ),
        "cost": lambda md: cost_pb2_grpc.CostStub(channels["cost"]).ListPrices(
            cost_pb2.ListPricesRequest(), metadata=md, timeout=5
        ),
        "pool": lambda md: pool_pb2_grpc.PoolStub(channels["pool"]).ListGpus(
            pool_pb2.ListGpusRequest(), metadata=md, timeout=5
        ),
    }
    try:
        key = IdpKey.rsa("idp-1")
        idp.publish(key)
        idp_admin = (("authorization", "Bearer " + key.mint("auditor", issuer=idp.issuer, roles=["admin"])),)
        dev_admin = (("authorization", "Bearer " + mint_token("root", "admin")),)

        # Before: the key file verifies everywhere; the issuer's tokens are refused everywhere.
        for name, probe in probes.items():
            assert await code_of(probe(idp_admin)) == grpc.StatusCode.UNAUTHENTICATED, name
        for name in ("audit", "cost", "pool"):  # (GetJwtSettings is NOT_FOUND until set)
            assert await code_of(probes[name](dev_admin)) == grpc.StatusCode.OK, name

        settings = pb.JwtSettings(issuer=idp.issuer, audience="harness", jwks_url=idp.jwks_url)
        await RegistryStub(channels["registry"]).SetJwtSettings(
            pb.SetJwtSettingsRequest(settings=settings), metadata=dev_admin, timeout=5
        )
        for name, probe in probes.items():

            async def follows(probe=probe) -> bool:
                return await code_of(probe(idp_admin)) == grpc.StatusCode.OK

            await eventually(follows)
            # The issuer's settings replace the key file: the dev token no longer verifies.
            assert await code_of(probe(dev_admin)) == grpc.StatusCode.UNAUTHENTICATED, name
        assert idp.hits["/jwks"] >= len(probes)  # each service fetched the set itself
    finally:
        for ch in channels.values():
            await ch.close()
        for r in (pool, cost, audit, registry):
            await r.stop(0)
