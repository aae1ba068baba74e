"""Budget alerts end to end over real mTLS gRPC: cost service + audit service + a webhook receiver.

Usage recorded over 50/80/95% of a budget -> three alerts listed, three BUDGET_DECISION audit
records (each exactly once) and three webhook POSTs; a failing webhook is retried until it
answers; an audit outage (and a cost restart during it) only delays shipping.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
from services.common.server import open_channel
from services.cost.config import AlertConfig, CostConfig
from services.cost.servicer import start_cost
from services.devtools.certs import make_certs
from tests.helpers.cost import LOCAL_WEBHOOKS
from tests.helpers.grpc import user_metadata
from tests.integration.test_registry_audit_feed import Restartable, eventually

K = cost_pb2
USD = 1_000_000
BUDGET_DECISION = common_pb2.AUDIT_EVENT_KIND_BUDGET_DECISION


class Webhook:
    """A local HTTP receiver: records every POST; answers 500 to the first `fail_first` of them."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.fail_first = 0
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with hook.lock:
                    hook.posts.append(
                        {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
                    )
                    failing = hook.fail_first > 0
                    hook.fail_first -= 1 if failing else 0
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def now_ts() -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.GetCurrentTime()
    return t


def usage(event_id: str, project: str = "ledger") -> common_pb2.UsageEvent:
    """One call of tool "t": 1 USD."""
    return common_pb2.UsageEvent(
        event_id=event_id, time=now_ts(), tool="t",
        actor=common_pb2.Actor(user="alice", team="finance", project=project, agent="ledger-bot"),
    )  # fmt: skip


@pytest.fixture
async def mesh(tmp_path, test_auth, mint_token):
    certs = make_certs(tmp_path / "certs", services=("cost", "audit", "ops"), agents=())

    def tls(name: str) -> TlsFiles:
        pair = certs.envoy if name == "envoy" else certs.services[name]
        return TlsFiles(str(pair.cert), str(pair.key), str(certs.ca_cert))

    audit_metrics: list[CollectorRegistry] = []

    async def start_audit_on(port: int):
        audit_metrics.append(CollectorRegistry())
        server = ServerConfig(name="audit", port=port, metrics_port=None, auth=test_auth, tls=tls("audit"))
        config = AuditConfig(server=server, db_url=f"sqlite:///{tmp_path / 'audit.db'}")
        return await start_audit(config, metrics_registry=audit_metrics[-1])

    audit = Restartable(start_audit_on)
    await audit.start()
    cost_metrics: list[CollectorRegistry] = []

    async def start_cost_on(port: int):
        cost_metrics.append(CollectorRegistry())
        server = ServerConfig(name="cost", port=port, metrics_port=None, auth=test_auth, tls=tls("cost"))
        alerts = AlertConfig(
            audit_addr=f"127.0.0.1:{audit.port}", poll_s=0.2, min_backoff_s=0.05, max_backoff_s=0.2,
            webhook_timeout_s=2.0, webhook_attempts=4, webhook_min_backoff_s=0.05, webhook_max_backoff_s=0.2,
            webhooks=LOCAL_WEBHOOKS,
        )  # fmt: skip
        config = CostConfig(server=server, db_url=f"sqlite:///{tmp_path / 'cost.db'}", alerts=alerts)
        return await start_cost(config, metrics_registry=cost_metrics[-1])

    cost = Restartable(start_cost_on)
    await cost.start()
    hook = Webhook()
    ops = open_channel(f"127.0.0.1:{cost.port}", tls("ops"))  # a Harness service: records, sets budgets
    users = open_channel(f"127.0.0.1:{cost.port}", tls("envoy"))  # users come in through Envoy
    auditors = open_channel(f"127.0.0.1:{audit.port}", tls("envoy"))
    m = {
        "audit": audit, "cost": cost, "hook": hook, "cost_metrics": cost_metrics, "audit_metrics": audit_metrics,
        "ops": cost_pb2_grpc.CostStub(ops), "cost_stub": cost_pb2_grpc.CostStub(users),
        "audit_stub": audit_pb2_grpc.AuditStub(auditors),
        "finance": user_metadata(mint_token("fiona", "finance")),
        "auditor": user_metadata(mint_token("carol", "auditor")),
    }  # fmt: skip
    price = K.Price(kind=K.PRICE_KIND_TOOL_CALL, subject="t", micro_usd=USD)
    price.effective_time.FromSeconds(int(time.time()) - 3600)
    await m["ops"].SetPrice(K.SetPriceRequest(price=price))
    yield m
    for channel in (ops, users, auditors):
        await channel.close()
    for server in (cost, audit):
        if server.running is not None:
            await server.stop()
    hook.close()


async def set_budget(m, webhook: str = "", limit_usd: int = 10, name: str = "ledger-monthly") -> None:
    b = K.Budget(name=name, scope=K.BUDGET_SCOPE_PROJECT, subject="ledger", period=K.BUDGET_PERIOD_MONTHLY,
                 limit_micro_usd=limit_usd * USD, webhook_url=webhook)  # fmt: skip
    await m["ops"].SetBudget(K.SetBudgetRequest(budget=b))


async def record(m, *events: common_pb2.UsageEvent) -> cost_pb2.RecordResponse:
    return await m["ops"].Record(K.RecordRequest(events=events))


async def list_alerts(m, budget: str = "") -> list[cost_pb2.Alert]:
    req = K.ListAlertsRequest(budget=budget)
    return list((await m["cost_stub"].ListAlerts(req, metadata=m["finance"])).alerts)


async def audit_alerts(m) -> list[audit_pb2.AuditRecord]:
    flt = audit_pb2.AuditFilter(kind=BUDGET_DECISION, action="alert")
    resp = await m["audit_stub"].Query(audit_pb2.QueryRequest(filter=flt), metadata=m["auditor"])
    return list(resp.records)


async def all_delivered(m, n: int) -> list[cost_pb2.Alert]:
    async def done() -> bool:
        alerts = await list_alerts(m)
        return len(alerts) == n and all(
            a.audit_shipped and a.webhook.state in (K.WEBHOOK_STATE_UNSPECIFIED, K.WEBHOOK_STATE_DELIVERED)
            for a in alerts
        )

    await eventually(done, 10.0)
    return await list_alerts(m)


async def test_thresholds_reach_audit_and_webhook_once(mesh, mint_token):
    m = mesh
    await set_budget(m, m["hook"].url, limit_usd=20)  # default thresholds 50/80/95 (and 100)
    await record(m, *(usage(f"a{i}") for i in range(8)))  # 8 USD: 40%
    assert await list_alerts(m) == []
    await record(m, usage("b0"), usage("b1"))  # 10 USD: 50%
    await record(m, *(usage(f"c{i}") for i in range(6)))  # 16 USD: 80%
    await record(m, *(usage(f"d{i}") for i in range(3)), usage("x", project="payroll"))  # 19 USD: 95%
    resent = await record(m, usage("d0"), usage("b1"))  # resends raise nothing
    assert (resent.accepted, resent.duplicates) == (0, 2)

    alerts = await all_delivered(m, 3)
    assert [(a.percent, a.spent_micro_usd) for a in alerts] == [
        (95, 19 * USD),
        (80, 16 * USD),
        (50, 10 * USD),
    ]
    a95 = alerts[0]
    assert (a95.budget, a95.limit_micro_usd, a95.scope, a95.subject) == (
        "ledger-monthly", 20 * USD, K.BUDGET_SCOPE_PROJECT, "ledger",
    )  # fmt: skip
    assert a95.period_start.ToDatetime().day == 1 and a95.period_end.seconds > a95.time.seconds
    assert (
        a95.webhook.url == m["hook"].url
        and a95.webhook.attempts == 1
        and a95.webhook.HasField("delivered_time")
    )
    ids = {a.id for a in alerts}

    # The audit log holds each alert exactly once, under the alert's id.
    records = await audit_alerts(m)
    assert Counter(r.event.event_id for r in records) == Counter({i: 1 for i in ids})
    by_id = {r.event.event_id: r.event for r in records}
    e = by_id[a95.id]
    assert (e.object, e.action, e.source, e.actor.project) == (
        "budget:ledger-monthly",
        "alert",
        "cost",
        "ledger",
    )
    assert e.details["percent"] == 95 and e.details["spent_micro_usd"] == 19 * USD
    assert e.details["limit_micro_usd"] == 20 * USD and e.details["period"] == "monthly"
    assert e.details["limit_reached"] is False and e.details["period_start"].endswith("T00:00:00Z")
    assert (m["audit_metrics"][-1].get_sample_value("harness_audit_duplicates_total") or 0) == 0

    # The webhook got one POST per alert, with the alert as JSON.
    posts = m["hook"].posts
    assert len(posts) == 3 and {p["body"]["id"] for p in posts} == ids
    for post in posts:
        assert post["path"] == "/hook" and post["headers"]["Content-Type"] == "application/json"
        assert post["headers"]["X-Harness-Alert-Id"] == post["body"]["id"]
    body = next(p["body"] for p in posts if p["body"]["percent"] == 80)
    assert {k: body[k] for k in ("budget", "scope", "subject", "period", "spent_micro_usd", "limit_micro_usd",
                                 "limit_reached")} == {
        "budget": "ledger-monthly", "scope": "project", "subject": "ledger", "period": "monthly",
        "spent_micro_usd": 16 * USD, "limit_micro_usd": 20 * USD, "limit_reached": False,
    }  # fmt: skip
    assert body["time"].endswith("Z") and body["period_start"] == a95.period_start.ToJsonString()

    metrics = m["cost_metrics"][-1]
    for percent in ("50", "80", "95"):
        labels = {"budget": "ledger-monthly", "percent": percent}
        assert metrics.get_sample_value("harness_budget_alerts_total", labels) == 1
    assert metrics.get_sample_value("harness_budget_alerts_total", {"budget": "ledger-monthly", "percent": "100"}) \
        is None  # fmt: skip

    # One budget's alerts; unknown budget; reader access like the other read RPCs.
    assert len(await list_alerts(m, "ledger-monthly")) == 3
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await list_alerts(m, "no-such-budget")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no-such-budget" in err.value.details()
    analyst = user_metadata(mint_token("dave", "analyst"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await m["cost_stub"].ListAlerts(K.ListAlertsRequest(), metadata=analyst)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_failing_webhook_is_retried_until_delivered_or_given_up(mesh):
    m = mesh
    m["hook"].fail_first = 2
    await set_budget(m, m["hook"].url, limit_usd=2)
    await record(m, usage("a"))  # 50%
    (alert,) = await all_delivered(m, 1)
    assert alert.percent == 50 and alert.webhook.state == K.WEBHOOK_STATE_DELIVERED
    assert alert.webhook.attempts == 3 and alert.webhook.last_error == ""
    assert [p["body"]["id"] for p in m["hook"].posts] == [alert.id] * 3

    # A webhook that never answers: bounded attempts (4 here), then failed with the last error.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    b = K.Budget(name="payroll", scope=K.BUDGET_SCOPE_PROJECT, subject="payroll", period=K.BUDGET_PERIOD_DAILY,
                 limit_micro_usd=USD, alert_percent=[100], webhook_url=dead)  # fmt: skip
    await m["ops"].SetBudget(K.SetBudgetRequest(budget=b))
    await record(m, usage("p", project="payroll"))

    async def failed() -> bool:
        alerts = await list_alerts(m, "payroll")
        return bool(alerts) and alerts[0].webhook.state == K.WEBHOOK_STATE_FAILED

    await eventually(failed, 10.0)
    (alert,) = await list_alerts(m, "payroll")
    assert alert.percent == 100 and alert.webhook.attempts == 4 and alert.audit_shipped
    assert "cannot reach the webhook" in alert.webhook.last_error


async def test_audit_outage_and_cost_restart_only_delay_shipping(mesh):
    m = mesh
    await set_budget(m, limit_usd=4)
    await m["audit"].stop()
    await record(m, usage("a"), usage("b"))  # 50%
    await asyncio.sleep(0.5)  # the audit loop tries and backs off
    (alert,) = await list_alerts(m)
    assert (
        alert.percent == 50 and not alert.audit_shipped and alert.webhook.state == K.WEBHOOK_STATE_UNSPECIFIED
    )
    await m["audit"].start()
    await all_delivered(m, 1)

    # Down again, and the cost service restarts meanwhile: the alert rows are the outbox.
    await m["audit"].stop()
    await record(m, usage("c"), usage("d"))  # 100%: 80, 95, 100
    await m["cost"].stop()
    await m["audit"].start()
    await m["cost"].start()
    alerts = await all_delivered(m, 4)
    assert sorted(a.percent for a in alerts) == [50, 80, 95, 100]
    records = await audit_alerts(m)
    assert Counter(r.event.event_id for r in records) == Counter({a.id: 1 for a in alerts})
    limit = next(r.event for r in records if r.event.details["percent"] == 100)
    assert limit.details["limit_reached"] is True and limit.details["spent_micro_usd"] == 4 * USD
