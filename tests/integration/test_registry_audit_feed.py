"""The registry's audit feed over real mTLS gRPC: every admin change reaches the audit service as
one ADMIN_CHANGE record naming who made it, also across an audit outage and a registry restart."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from harness.audit.v1 import audit_pb2, audit_pb2_grpc
from harness.common.v1 import common_pb2
from harness.registry.v1 import registry_pb2 as pb
from harness.registry.v1.registry_pb2_grpc import RegistryStub
from prometheus_client import CollectorRegistry

from services.audit.config import AuditConfig
from services.audit.servicer import start_audit
from services.common.config import ServerConfig, TlsFiles
from services.common.server import open_channel
from services.devtools.certs import make_certs
from services.registry.app import RegistryConfig, serve
from services.registry.seed import seed_registry
from services.registry.store import Store
from tests.helpers.grpc import user_metadata
from tests.helpers.polling import eventually
from tests.integration.test_registry_server import DEMO

ADMIN_CHANGE = common_pb2.AUDIT_EVENT_KIND_ADMIN_CHANGE


class Restartable:
    """A server on one port that can be stopped and started again over the same database."""

    def __init__(self, start) -> None:
        self._start = start
        self.port = 0
        self.running = None

    async def start(self) -> None:
        self.running = await self._start(self.port)
        self.port = self.running.port

    async def stop(self) -> None:
        await self.running.stop(0)
        self.running = None


@pytest.fixture
async def mesh(tmp_path, test_auth, db_url, mint_token):
    certs = make_certs(tmp_path / "certs", services=("registry", "audit", "ops"), agents=())

    def tls(name: str) -> TlsFiles:
        pair = certs.envoy if name == "envoy" else certs.services[name]
        return TlsFiles(str(pair.cert), str(pair.key), str(certs.ca_cert))

    audit_db = f"sqlite:///{tmp_path / 'audit.db'}"
    metrics: list[CollectorRegistry] = []

    async def start_audit_on(port: int):
        metrics.append(CollectorRegistry())
        server = ServerConfig(name="audit", port=port, metrics_port=None, auth=test_auth, tls=tls("audit"))
        return await start_audit(AuditConfig(server=server, db_url=audit_db), metrics_registry=metrics[-1])

    audit = Restartable(start_audit_on)
    await audit.start()

    async def start_registry_on(port: int):
        server = ServerConfig(
            name="registry", port=port, metrics_port=None, auth=test_auth, tls=tls("registry")
        )
        return await serve(RegistryConfig(server=server, db_url=db_url, audit_addr=f"127.0.0.1:{audit.port}"))

    registry = Restartable(start_registry_on)
    await registry.start()
    ops = open_channel(f"127.0.0.1:{registry.port}", tls("ops"))  # the stack's seeder: a service
    # Users come in through Envoy: its certificate, their token.
    user_reg = open_channel(f"127.0.0.1:{registry.port}", tls("envoy"))
    user_audit = open_channel(f"127.0.0.1:{audit.port}", tls("envoy"))
    store = Store(db_url)  # a second handle on the registry database, to read its log and cursor
    ctx = {
        "audit": audit,
        "registry": registry,
        "metrics": metrics,
        "store": store,
        "ops": RegistryStub(ops),
        "registry_stub": RegistryStub(user_reg),
        "audit_stub": audit_pb2_grpc.AuditStub(user_audit),
        "admin": user_metadata(mint_token("alice", "admin")),
        "auditor": user_metadata(mint_token("carol", "auditor")),
    }
    yield ctx
    for channel in (ops, user_reg, user_audit):
        await channel.close()
    for server in (registry, audit):
        if server.running is not None:
            await server.stop()
    store.close()


async def admin_records(m) -> list[audit_pb2.AuditRecord]:
    out, page = [], common_pb2.PageRequest(page_size=500)
    while True:
        flt = audit_pb2.AuditFilter(kind=ADMIN_CHANGE)
        resp = await m["audit_stub"].Query(
            audit_pb2.QueryRequest(filter=flt, page=page), metadata=m["auditor"]
        )
        out.extend(resp.records)
        if not resp.page.next_page_token:
            return out
        page.page_token = resp.page.next_page_token


async def all_shipped(m) -> None:
    """Waits until the audit log holds every revision of the registry's change log."""
    store = m["store"]

    async def done() -> bool:
        head = await asyncio.to_thread(store.last_revision)
        return len({r.event.event_id for r in await admin_records(m)}) == head

    await eventually(done, 10.0)
    # and the cursor catches up right after the acknowledgement
    await eventually(lambda: _async(store.audit_cursor() == store.last_revision()), 5.0)


async def _async(value):
    return value


def assert_exactly_once_in_order(records, head: int) -> None:
    ids = [r.event.event_id for r in records]
    assert Counter(ids).most_common(1)[0][1] == 1, "a change was stored twice"
    assert ids == [f"registry-change-{rev}" for rev in range(1, head + 1)]


async def test_admin_changes_arrive_with_who_made_them(mesh):
    m = mesh
    await seed_registry(m["ops"], DEMO, ())
    req = pb.SetAgentStateRequest(agent="demo-agent", state=common_pb2.AGENT_STATE_DRAINING)
    md = (*m["admin"], ("x-request-id", "req-drain-1"))
    await m["registry_stub"].SetAgentState(req, metadata=md)
    await all_shipped(m)

    head = m["store"].last_revision()
    records = await admin_records(m)
    assert_exactly_once_in_order(records, head)
    seeded = records[0].event
    assert seeded.source == "registry" and seeded.object == "team:finance" and seeded.action == "create"
    assert seeded.actor.user == "" and seeded.actor.auth_method == "mtls"
    assert seeded.details["service"] == "ops" and seeded.details["kind"] == "team"

    last = records[-1].event
    assert (last.actor.user, last.actor.auth_method) == ("alice", "jwt")
    assert (last.object, last.action, last.decision) == (
        "agent:demo-agent",
        "update",
        common_pb2.DECISION_ALLOW,
    )
    assert last.correlation.request_id == "req-drain-1" and len(last.correlation.trace_id) == 32
    assert dict(last.details) == {"revision": head, "kind": "agent", "key": "demo-agent", "deleted": False}

    by_user = await m["audit_stub"].Query(
        audit_pb2.QueryRequest(filter=audit_pb2.AuditFilter(user="alice", kind=ADMIN_CHANGE)),
        metadata=m["auditor"],
    )
    assert [r.event.event_id for r in by_user.records] == [f"registry-change-{head}"]
    assert (await m["audit_stub"].Verify(audit_pb2.VerifyRequest(), metadata=m["auditor"])).ok


async def test_outage_and_registry_restart_ship_each_change_exactly_once(mesh):
    m = mesh
    stub, admin = m["registry_stub"], m["admin"]
    await stub.CreateTeam(pb.CreateTeamRequest(team=pb.Team(name="finance")), metadata=admin)
    await all_shipped(m)

    await m["audit"].stop()  # changes made now wait in the registry's change log
    for i in range(5):
        await stub.CreateTeam(pb.CreateTeamRequest(team=pb.Team(name=f"team-{i}")), metadata=admin)
    await asyncio.sleep(0.5)  # the feed tries and backs off
    assert m["store"].audit_cursor() == 1
    await m["audit"].start()
    await all_shipped(m)
    assert_exactly_once_in_order(await admin_records(m), 6)

    await m["registry"].stop()  # the cursor is durable: a restart resumes after it
    await m["registry"].start()
    await stub.CreateTeam(pb.CreateTeamRequest(team=pb.Team(name="after-restart")), metadata=admin)
    await all_shipped(m)
    records = await admin_records(m)
    assert_exactly_once_in_order(records, 7)
    assert records[-1].event.object == "team:after-restart" and records[-1].event.actor.user == "alice"
    # Nothing was resent after the restart: the audit service saw no duplicates.
    assert (m["metrics"][-1].get_sample_value("harness_audit_duplicates_total") or 0) == 0
