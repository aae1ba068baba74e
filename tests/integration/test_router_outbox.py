"""The router's durable outbox with real audit and cost services over mTLS: events survive
the receivers being down and the router process going away (a new shipper on the same file
sends what is left), each stored exactly once; fail-closed refuses what cannot be recorded."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import grpc
import pytest
from google.protobuf import timestamp_pb2
from harness.audit.v1 import audit_pb2, audit_pb2_grpc
from harness.common.v1 import common_pb2
from harness.cost.v1 import cost_pb2, cost_pb2_grpc
from prometheus_client import CollectorRegistry

from services.audit.config import AuditConfig
from services.audit.servicer import start_audit
from services.common.config import ServerConfig, TlsFiles
from services.common.errors import Unavailable
from services.common.server import open_channel
from services.cost.config import CostConfig
from services.cost.servicer import start_cost
from services.devtools.certs import make_certs
from services.router.events import EventShipper
from services.router.outbox import Outbox, OutboxError
from tests.helpers.cmdline import REPO
from tests.helpers.grpc import user_metadata
from tests.helpers.polling import eventually


def audit_event(i: int) -> common_pb2.AuditEvent:
    return common_pb2.AuditEvent(
        event_id=f"a-{i}",
        time=timestamp_pb2.Timestamp(seconds=int(time.time())),
        kind=common_pb2.AUDIT_EVENT_KIND_MODEL_CALL,
        actor=common_pb2.Actor(user="alice", agent="demo-agent"),
        correlation=common_pb2.Correlation(trace_id=f"t{i}"),
        source="router",
    )


def usage_event(i: int) -> common_pb2.UsageEvent:
    return common_pb2.UsageEvent(
        event_id=f"u-{i}",
        time=timestamp_pb2.Timestamp(seconds=int(time.time())),
        model="llama-3-8b",
        actor=common_pb2.Actor(user="alice", project="ledger", agent="demo-agent"),
        usage=common_pb2.Usage(input_tokens=3, output_tokens=5),
    )


def test_outbox_keeps_events_until_acknowledged_and_across_reopen(tmp_path):
    path = str(tmp_path / "outbox.db")
    box = Outbox(path)
    for i in range(3):
        box.append("audit", b"a%d" % i)
    box.append("usage", b"u0")
    rows = box.peek("audit", 2)
    assert [p for _, p in rows] == [b"a0", b"a1"]
    box.ack([seq for seq, _ in rows])
    box.close()
    again = Outbox(path)  # a new process on the same file
    assert [p for _, p in again.peek("audit", 10)] == [b"a2"] and again.pending("usage") == 1
    again.close()
    with pytest.raises(OutboxError):
        again.append("audit", b"late")  # closed: what a failing disk looks like to the caller


def test_a_second_process_on_an_open_outbox_is_refused_with_a_reason(tmp_path):
    """Two routers on one file would each ship the other's calls under way as aborted on a
    restart: the file belongs to one process until it closes it."""
    path = str(tmp_path / "outbox.db")
    first = Outbox(path)
    first.append("audit", b"a0")
    script = (
        "import sys\n"
        "from services.router.outbox import Outbox, OutboxError\n"
        "try:\n"
        "    Outbox(sys.argv[1])\n"
        "except OutboxError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    held = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, cwd=REPO)
    assert held.returncode == 3, held.stderr
    assert "held by another process" in held.stdout and "--outbox" in held.stdout
    first.close()
    free = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, cwd=REPO)
    assert free.returncode == 0, free.stdout + free.stderr


@pytest.fixture
async def receivers(tmp_path, test_auth):
    certs = make_certs(tmp_path / "certs", services=("audit", "cost", "router"), agents=())

    def tls(name: str) -> TlsFiles:
        pair = certs.services[name]
        return TlsFiles(str(pair.cert), str(pair.key), str(certs.ca_cert))

    state = {"audit": None, "cost": None, "ports": {"audit": 0, "cost": 0}}

    async def start(which: str) -> None:
        port = state["ports"][which]
        server = ServerConfig(name=which, port=port, metrics_port=None, auth=test_auth, tls=tls(which))
        if which == "audit":
            running = await start_audit(
                AuditConfig(server=server, db_url=f"sqlite:///{tmp_path / 'audit.db'}")
            )
        else:
            running = await start_cost(CostConfig(server=server, db_url=f"sqlite:///{tmp_path / 'cost.db'}"))
        state[which], state["ports"][which] = running, running.port

    async def stop(which: str) -> None:
        await state[which].stop(0)
        state[which] = None

    await start("audit")
    await start("cost")
    channels = {w: open_channel(f"127.0.0.1:{state['ports'][w]}", tls("router")) for w in ("audit", "cost")}
    yield start, stop, channels
    for w in ("audit", "cost"):
        if state[w] is not None:
            await stop(w)
        await channels[w].close()


async def stored(channels, md) -> tuple[int, int]:
    audit = audit_pb2_grpc.AuditStub(channels["audit"])
    records = await audit.Query(
        audit_pb2.QueryRequest(filter=audit_pb2.AuditFilter(agent="demo-agent")),
        wait_for_ready=True,
        metadata=md,
    )
    cost = cost_pb2_grpc.CostStub(channels["cost"])
    report = await cost.Report(cost_pb2.ReportRequest(group_by=["agent"]), wait_for_ready=True, metadata=md)
    return len(records.records), sum(row.requests for row in report.rows)


async def test_events_survive_receiver_outages_and_a_router_restart(receivers, tmp_path, mint_token):
    md = user_metadata(mint_token("auditor", "admin"))
    start, stop, channels = receivers
    path = str(tmp_path / "router-outbox.db")
    shipper = EventShipper(
        channels["audit"], channels["cost"], CollectorRegistry(), Outbox(path), linger_s=0.01
    )
    shipper.start()
    await stop("audit")  # the audit service is down while the router keeps serving
    for i in range(20):
        shipper.emit_audit(audit_event(i))
        shipper.emit_usage(usage_event(i))
    await asyncio.sleep(0.3)
    assert shipper.outbox.pending("audit") == 20  # kept, not lost
    # The router process goes away before the audit service comes back (no drain: as a SIGKILL).
    shipper._audit._task.cancel()
    shipper._usage._task.cancel()
    shipper.outbox.close()

    await start("audit")
    restarted = EventShipper(
        channels["audit"], channels["cost"], CollectorRegistry(), Outbox(path), linger_s=0.01
    )
    restarted.start()
    for i in range(20, 25):
        restarted.emit_audit(audit_event(i))
        restarted.emit_usage(usage_event(i))

    async def all_stored() -> bool:
        return await stored(channels, md) == (25, 25)

    await eventually(all_stored)
    assert restarted.outbox.pending("audit") == restarted.outbox.pending("usage") == 0
    await restarted.drain(1.0)


async def test_fail_closed_refuses_what_cannot_be_made_durable(receivers, tmp_path):
    _, _, channels = receivers
    outbox = Outbox(str(tmp_path / "closed.db"))
    shipper = EventShipper(channels["audit"], channels["cost"], CollectorRegistry(), outbox, fail_closed=True)
    shipper.check_durable()  # healthy: admits
    outbox._db.close()  # the disk goes away
    with pytest.raises(Unavailable, match="could not be recorded durably"):
        shipper.emit_audit(audit_event(1))
    with pytest.raises(Unavailable, match="fail-closed"):
        shipper.check_durable()


async def test_a_lane_keeps_shipping_after_an_unexpected_error(tmp_path):
    """A non-RPC failure while sending (a bug, a bad row) used to end the lane's task: events
    then waited in the outbox until a restart. Now the lane logs it and tries again."""
    from prometheus_client import Counter, Gauge

    from services.router.events import _Lane

    registry = CollectorRegistry()
    pending = Gauge("p", "p", ["lane"], registry=registry)
    shipped = Counter("s", "s", ["lane"], registry=registry)
    sent: list[list[bytes]] = []

    async def send(batch: list[bytes]) -> None:
        if not sent:
            sent.append([])  # the first attempt fails
            raise RuntimeError("unexpected")
        sent.append(batch)

    lane = _Lane("audit", Outbox(str(tmp_path / "o.db")), send, 10, pending, shipped, 0.0)
    lane.start()
    try:
        lane.put(b"e1", fail_closed=True)
        deadline = asyncio.get_running_loop().time() + 5
        while len(sent) < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert sent[1:] == [[b"e1"]]
    finally:
        await lane.drain(1.0)


async def test_a_receiver_refusing_batches_shows_as_send_failures_and_a_growing_backlog_age(tmp_path):
    """What the outbox alerts read: failed sends are counted and the oldest waiting event's age
    grows while the receiver refuses; once it accepts, the age is back to 0."""
    from grpc.aio import AioRpcError, Metadata
    from prometheus_client import Counter, Gauge

    from services.router.events import _Lane

    registry = CollectorRegistry()
    pending = Gauge("p", "p", ["lane"], registry=registry)
    shipped = Counter("s", "s", ["lane"], registry=registry)
    failures = Counter("f", "f", ["lane"], registry=registry)
    age = Gauge("a", "a", ["lane"], registry=registry)
    accept = asyncio.Event()

    async def send(batch: list[bytes]) -> None:
        if not accept.is_set():
            raise AioRpcError(grpc.StatusCode.UNAVAILABLE, Metadata(), Metadata(), "audit is down")

    outbox = Outbox(str(tmp_path / "o.db"))
    lane = _Lane("audit", outbox, send, 10, pending, shipped, 0.0, send_failures=failures, oldest_age=age)
    lane.start()
    loop = asyncio.get_running_loop()
    try:
        assert registry.get_sample_value("a", {"lane": "audit"}) == 0
        lane.put(b"e1", fail_closed=True)
        deadline = loop.time() + 5
        while (registry.get_sample_value("f_total", {"lane": "audit"}) or 0) < 2 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert registry.get_sample_value("f_total", {"lane": "audit"}) >= 2
        first = registry.get_sample_value("a", {"lane": "audit"})
        await asyncio.sleep(0.2)
        assert registry.get_sample_value("a", {"lane": "audit"}) > first > 0
        accept.set()
        deadline = loop.time() + 10
        while outbox.pending("audit") and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert registry.get_sample_value("s_total", {"lane": "audit"}) == 1
        assert registry.get_sample_value("a", {"lane": "audit"}) == 0
    finally:
        await lane.drain(1.0)


def test_events_written_before_the_created_column_count_from_the_open(tmp_path):
    """An outbox file from an older router (no `created` column) opens, gains the column, and
    its old events count as waiting since this open (never as 1970)."""
    import sqlite3
    import time

    path = str(tmp_path / "old.db")
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, lane TEXT NOT NULL, payload BLOB NOT NULL)"
    )
    db.execute("INSERT INTO outbox (lane, payload) VALUES ('audit', x'01')")
    db.commit()
    db.close()
    before = time.time()
    box = Outbox(path)
    assert before <= box.oldest("audit") <= time.time()
    assert box.oldest("usage") is None
    box.append("usage", b"u")
    assert box.oldest("usage") >= before


async def test_a_lane_splits_a_backlog_too_large_for_one_request_by_bytes(tmp_path):
    """Receivers refuse a request over 16 MiB: 256 events of 64 KiB of details each would be,
    and be refused on every retry, stopping the lane. Batches are cut by bytes as well as count."""
    from prometheus_client import Counter, Gauge

    from services.router.events import MAX_BATCH_BYTES, _Lane

    registry = CollectorRegistry()
    pending = Gauge("p", "p", ["lane"], registry=registry)
    shipped = Counter("s", "s", ["lane"], registry=registry)
    sent: list[list[bytes]] = []

    async def send(batch: list[bytes]) -> None:
        sent.append(batch)

    outbox = Outbox(str(tmp_path / "o.db"))
    event = b"x" * (MAX_BATCH_BYTES // 3 + 1)  # three of them are over the bound
    for _ in range(7):
        outbox.append("audit", event)
    lane = _Lane("audit", outbox, send, 256, pending, shipped, 0.0)
    lane.start()
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while sum(map(len, sent)) < 7 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert [len(batch) for batch in sent] == [2, 2, 2, 1]
        assert all(sum(map(len, batch)) <= MAX_BATCH_BYTES for batch in sent)
        assert outbox.pending("audit") == 0
    finally:
        await lane.drain(1.0)
