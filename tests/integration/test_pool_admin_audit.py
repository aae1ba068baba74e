"""Every change made through the pool's API (endpoints registered and removed, deployments claimed
and dropped) reaches the audit log as an ADMIN_CHANGE event with who made it, and none is lost
while the audit service is away (pool + audit + an engine simulator over real mTLS gRPC)."""

from __future__ import annotations

import grpc
import pytest
from harness.audit.v1 import audit_pb2, audit_pb2_grpc
from harness.common.v1 import common_pb2
from harness.pool.v1 import pool_pb2, pool_pb2_grpc

from services.audit.config import AuditConfig
from services.audit.servicer import start_audit
from services.common.config import ServerConfig, TlsFiles
from services.common.server import open_channel
from services.devtools.certs import make_certs
from services.enginesim.testing import start_enginesim
from services.pool.app import serve
from services.pool.catalog import ModelSpec
from services.pool.config import PoolConfig
from services.pool.state import GIB
from tests.helpers.grpc import user_metadata
from tests.integration.test_registry_audit_feed import Restartable, eventually

ADMIN_CHANGE = common_pb2.AUDIT_EVENT_KIND_ADMIN_CHANGE
MODEL = "llama-3-8b-instruct"


@pytest.fixture
async def mesh(tmp_path, test_auth, mint_token):
    certs = make_certs(tmp_path / "certs", services=("pool", "audit"), agents=())

    def tls(name: str) -> TlsFiles:
        pair = certs.envoy if name == "envoy" else certs.services[name]
        return TlsFiles(str(pair.cert), str(pair.key), str(certs.ca_cert))

    async def start_audit_on(port: int):
        server = ServerConfig(name="audit", port=port, metrics_port=None, auth=test_auth, tls=tls("audit"))
        return await start_audit(AuditConfig(server=server, db_url=f"sqlite:///{tmp_path / 'audit.db'}"))

    audit = Restartable(start_audit_on)
    await audit.start()
    sim = await start_enginesim(time_scale=500.0, load=(MODEL,), preload=False)
    pool_config = PoolConfig(
        nvml=False, probe_interval_s=0.1, audit_addr=f"127.0.0.1:{audit.port}",
        models=(ModelSpec("llama", MODEL, 20 * GIB),), db_url=f"sqlite:///{tmp_path / 'pool.db'}",
    )  # fmt: skip
    server = ServerConfig(name="pool", port=0, metrics_port=None, auth=test_auth, tls=tls("pool"))
    pool, _app = await serve(pool_config, server)
    users = open_channel(pool.address, tls("envoy"))  # users come in through Envoy
    auditors = open_channel(f"127.0.0.1:{audit.port}", tls("envoy"))
    m = {
        "audit": audit, "sim": sim, "pool": pool_pb2_grpc.PoolStub(users),
        "audit_stub": audit_pb2_grpc.AuditStub(auditors),
        "alice": user_metadata(mint_token("alice", "admin")),
        "auditor": user_metadata(mint_token("carol", "auditor")),
    }  # fmt: skip
    yield m
    for channel in (users, auditors):
        await channel.close()
    await pool.stop(0)
    await sim.stop()
    if audit.running is not None:
        await audit.stop()


async def pool_changes(m) -> list[common_pb2.AuditEvent]:
    flt = audit_pb2.AuditFilter(kind=ADMIN_CHANGE)
    resp = await m["audit_stub"].Query(audit_pb2.QueryRequest(filter=flt), metadata=m["auditor"])
    return [r.event for r in resp.records if r.event.source == "pool"]


def sim_endpoint(m, name: str = "gpu-a") -> pool_pb2.Endpoint:
    return pool_pb2.Endpoint(
        name=name, address=m["sim"].address, metrics_url=m["sim"].metrics_url + "?token=s3cr3t",
        gpu_type="H100", gpu_count=1, gpu_memory_bytes=80 * GIB, labels={"zone": "a"},
    )  # fmt: skip


async def test_endpoint_and_deployment_changes_are_audited_with_the_actor(mesh):
    m = mesh
    alice = (*m["alice"], ("x-request-id", "req-pool-1"))
    pool = m["pool"]
    await pool.RegisterEndpoint(pool_pb2.RegisterEndpointRequest(endpoint=sim_endpoint(m)), metadata=alice)

    async def healthy() -> bool:
        eps = (await pool.ListEndpoints(pool_pb2.ListEndpointsRequest(), metadata=m["alice"])).endpoints
        return any(e.health == pool_pb2.ENDPOINT_HEALTH_HEALTHY for e in eps)

    await eventually(healthy, 10.0)
    await pool.Deploy(pool_pb2.DeployRequest(model="llama", replicas=1), metadata=m["alice"])
    await pool.Undeploy(pool_pb2.UndeployRequest(model="llama"), metadata=m["alice"])
    await pool.DeregisterEndpoint(pool_pb2.DeregisterEndpointRequest(name="gpu-a"), metadata=m["alice"])

    events: list[common_pb2.AuditEvent] = []

    async def all_shipped() -> bool:
        nonlocal events
        events = await pool_changes(m)
        return len(events) == 4

    await eventually(all_shipped, 15.0)
    got = [(e.object, e.action) for e in events]
    assert got == [
        ("endpoint:gpu-a", "register"),
        ("deployment:llama", "deploy"),
        ("deployment:llama", "undeploy"),
        ("endpoint:gpu-a", "deregister"),
    ]
    register, deploy = events[0], events[1]
    assert register.actor.user == "alice" and register.actor.auth_method == "jwt"
    assert register.correlation.request_id == "req-pool-1" and register.decision == common_pb2.DECISION_ALLOW
    assert register.details["address"] == m["sim"].address and register.details["metrics"] is True
    assert deploy.details["endpoints"] == ["gpu-a"] and deploy.details["replicas"] == 1
    assert all("s3cr3t" not in str(e) for e in events)  # a metrics URL may carry a credential


async def test_a_refused_change_is_not_recorded_and_changes_wait_out_an_audit_outage(mesh):
    m = mesh
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        endpoint = pool_pb2.Endpoint(name="bad name!", address=m["sim"].address)
        await m["pool"].RegisterEndpoint(
            pool_pb2.RegisterEndpointRequest(endpoint=endpoint), metadata=m["alice"]
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await m["audit"].stop()
    request = pool_pb2.RegisterEndpointRequest(endpoint=sim_endpoint(m, "gpu-b"))
    await m["pool"].RegisterEndpoint(request, metadata=m["alice"])  # the audit service is down
    await m["audit"].start()

    async def shipped() -> bool:
        return [e.object for e in await pool_changes(m)] == ["endpoint:gpu-b"]

    await eventually(shipped, 20.0)
